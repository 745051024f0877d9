"""Helpers shared by the retrieval tests (no tests of its own): an embedder whose
vectors are hand-made, so a test knows every cosine exactly.

Imported as ``from rag_support import ...``: pytest puts ``tests/`` on the path.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


class KeywordEmbedder:
    """Hand-made vectors: how often each of :attr:`WORDS` occurs, unit length.

    Records every text it embeds, so tests can tell which chunks were re-embedded.
    A subclass picks other words (the serve tests' physics and biology terms).
    """

    name = "test:keywords"
    WORDS = ("alpha", "beta", "gamma", "delta")
    dim = len(WORDS)

    def __init__(self):
        self.embedded: list[str] = []

    def embed(self, texts):
        self.embedded.extend(texts)
        rows = np.array(
            [[re.findall(r"\w+", t.lower()).count(w) for w in self.WORDS] for t in texts],
            dtype=np.float32,
        ).reshape(len(texts), self.dim)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.where(norms > 0, rows / np.maximum(norms, 1e-12), 0).astype(np.float32)

    def token_spans(self, text):
        return [m.span() for m in re.finditer(r"\S+", text)]


def write_docs(root: Path, docs: dict[str, str]) -> Path:
    """``root/docs`` holding one text file per ``docs`` entry (name -> text)."""
    folder = root / "docs"
    folder.mkdir()
    for name, text in docs.items():
        (folder / name).write_text(text + "\n")
    return folder
