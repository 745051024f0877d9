"""The layers of tutorlm, bottom to top, and a test that no module imports upward.

docs/dev/architecture.md explains each layer; this file is the rule itself. Every
import of a ``tutorlm`` module counts, including those inside functions (a lazy
import is still a dependency, only a later one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tutorlm"

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("layout", "hardware", "cli_flags"),
    ("contract", "data.formats", "commands"),
    ("packed",),
    ("models", "prompts", "templates", "decoder"),
    ("generation", "bulk", "logprobs"),
    ("recipe", "smoke"),
    ("data", "train", "evaluate", "quantize", "rag", "serve", "quiz", "report", "model_commands"),
    ("pipeline",),
    ("cli",),
    ("__main__",),
]
"""Each module belongs to the most specific name that matches it (``data.formats`` before
``data``); a module may import its own unit and any unit of a lower layer."""

STAGE_ARROWS: dict[str, set[str]] = {
    "train": {"data"},
    "evaluate": {"data", "rag"},
    "quantize": {"evaluate", "data"},
    "serve": {"rag", "quiz", "quantize"},
    "quiz": {"rag", "evaluate", "data"},
    "rag": set(),
    "model_commands": set(),
    "report": set(),
    "data": {"rag"},
}
"""Imports allowed between units of the stage layer. Training never imports evaluation,
nor evaluation training; nothing imports the pipeline or the CLI."""

CONFIG_MODULES = ("config", "presets")
"""A stage's typed recipe section (``<stage>/config.py``) and what it validates against
(``data/presets.py``): the recipe is made of them, so ``recipe`` and ``smoke`` may import
them, while every stage may import ``recipe``."""


def _unit(module: str) -> str:
    """The layer unit of a dotted module name under ``tutorlm``."""
    parts = module.split(".")[1:] or ["__init__"]
    for size in (2, 1):
        name = ".".join(parts[:size])
        if any(name in layer for layer in LAYERS):
            return name
    return parts[0]


def _layer(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"tutorlm.{unit} belongs to no layer: add it to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(("tutorlm", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    found, modules = set(), _modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & set(modules)
            # ``from tutorlm.data import presets`` depends on the module, not the package
            found.update(submodules or {target})
    return {name for name in found if name in modules and name.startswith("tutorlm.")}


def allowed(importer: str, imported: str) -> bool:
    """Whether module ``importer`` may import module ``imported`` (dotted names)."""
    mine, theirs = _unit(importer), _unit(imported)
    if mine == theirs:
        return True
    if mine in ("recipe", "smoke") and imported.split(".")[-1] in CONFIG_MODULES:
        return True
    low, high = _layer(theirs), _layer(mine)
    if low < high or low == high == _layer("recipe"):
        return True
    if low == high == _layer("data"):
        return theirs == "recipe" or theirs.split(".")[0] in STAGE_ARROWS.get(mine, set())
    return False


def upward_imports() -> list[str]:
    problems = []
    for module, path in _modules().items():
        for imported in sorted(_imports(path, module)):
            if not allowed(module, imported):
                problems.append(f"{module} imports {imported}")
    return problems


def test_no_module_imports_upward():
    assert upward_imports() == []


@pytest.mark.parametrize(
    ("importer", "imported", "ok"),
    [
        ("tutorlm.evaluate.runner", "tutorlm.train.runtime", False),
        ("tutorlm.train.sft", "tutorlm.evaluate.scorer", False),
        ("tutorlm.serve.commands", "tutorlm.pipeline.stages", False),
        ("tutorlm.rag.index", "tutorlm.evaluate.mcqa", False),
        ("tutorlm.recipe", "tutorlm.pipeline.sweep", False),
        ("tutorlm.layout", "tutorlm.recipe", False),
        ("tutorlm.evaluate.runner", "tutorlm.rag.index", True),
        ("tutorlm.quantize.compare", "tutorlm.evaluate.runner", True),
        ("tutorlm.recipe", "tutorlm.train.config", True),
        ("tutorlm.train.stage", "tutorlm.recipe", True),
        ("tutorlm.pipeline.stages", "tutorlm.train.sft", True),
        ("tutorlm.data.build", "tutorlm.data.formats", True),
        ("tutorlm.data.sources.tutoring", "tutorlm.rag.prompt", True),
        ("tutorlm.rag.index", "tutorlm.data.formats", True),
        ("tutorlm.rag.prompt", "tutorlm.data.sources.tutoring", False),
    ],
)
def test_the_rule_itself(importer, imported, ok):
    assert allowed(importer, imported) is ok
