"""What a data build depends on, and whether the files on disk are what it would write.

``tutorlm.data.build`` keys every build by :func:`fingerprint` and skips one whose key
and files match the manifest (:func:`up_to_date`).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from tutorlm import __version__
from tutorlm.contract import contract
from tutorlm.data.formats import file_sha256
from tutorlm.layout import RunLayout


def data_seed(recipe) -> int:
    """The seed of the build: ``data.seed``, else the recipe's."""
    return recipe.data.seed if recipe.data.seed is not None else recipe.seed


def code_fingerprint() -> str:
    """sha256 over this package's code and fixtures: a new tutorlm rebuilds the data."""
    digest = hashlib.sha256(__version__.encode())
    root = resources.files("tutorlm.data")
    paths = sorted(
        p for p in Path(str(root)).rglob("*") if p.suffix in (".py", ".jsonl") and p.is_file()
    )
    for path in paths:
        digest.update(path.relative_to(Path(str(root))).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def uses_model(outputs: list) -> bool:
    """Whether the build runs the recipe's model: a ``max_tokens`` rule counts tokens
    through its chat template, a ``corrupt: model`` source generates with it."""
    return any(o.max_tokens for o in outputs) or any(
        (getattr(s, "corrupt", None) and s.corrupt.method == "model")
        or (s.type == "tutoring" and s.tokenizer is None)  # the model's tokens: notes budget
        for o in outputs
        for s in o.sources
    )


def fingerprint(recipe, outputs: list) -> str:
    """What the files depend on: the data stage's declared settings
    (:func:`tutorlm.contract.contract`), its inputs and this code.

    Of the declared settings, the model and its chat template count only when the
    build runs the model (:func:`uses_model`), and the seed is the one the build draws
    with (:func:`data_seed`), so a new base model or run seed reuses the same data.
    """
    settings = contract("data").settings(recipe.to_dict())
    settings["seed"] = data_seed(recipe)
    if not uses_model(outputs):
        settings.pop("model", None)
        settings.pop("chat_template", None)
    if not any(s.type == "tutoring" for o in outputs for s in o.sources):
        for key in [key for key in settings if key.startswith("rag.")]:
            settings.pop(key)  # only tutoring rows retrieve
    parts = {
        "settings": settings,
        "inputs": {r.name: r.fingerprint() for o in outputs for r in o.readers},
        "code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def up_to_date(layout: RunLayout, key: str) -> dict | None:
    """The manifest, if the files on disk are exactly what this key would build."""
    if not layout.data_manifest.is_file():
        return None
    manifest = json.loads(layout.data_manifest.read_text())
    if manifest.get("fingerprint") != key:
        return None
    for name, info in manifest.get("outputs", {}).items():
        file = layout.data_dir / name
        if not file.is_file() or file_sha256(file) != info["sha256"]:
            return None
    return manifest
