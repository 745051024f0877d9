"""Search an index: dense (faiss), BM25 (words), or both fused by reciprocal rank.

Dense search finds paraphrases ("rate of change" for "derivative"); BM25 finds
rare exact words (a symbol, a theorem's name) that a small embedding model blurs.
Hybrid search ranks by reciprocal rank fusion (Cormack et al., 2009): each list
gives a chunk ``1 / (60 + rank)``, and the sums are ranked. It needs no score
calibration between the two, which have unrelated scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np

from tutorlm.rag.bm25 import BM25
from tutorlm.rag.config import SearchMode
from tutorlm.rag.records import Chunk, Hit
from tutorlm.rag.store import load_live

RRF_K = 60
"""The rank offset of reciprocal rank fusion; 60 is the value of the original paper."""
HNSW_EF_SEARCH = 64
"""Candidates an HNSW index explores per query (faiss's default is 16)."""
FUSION_DEPTH = 50
"""How deep each list is read before fusing: a chunk ranked below this in both lists
cannot enter the fused top k for any k <= this depth."""


def _single_threaded(function, *args):
    """Run a faiss call on one OpenMP thread, then restore torch's thread count."""
    import faiss
    import torch

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    try:
        return function(*args)
    finally:
        torch.set_num_threads(threads)


class Index:
    """A loaded index: chunks, their faiss index and their BM25 weights.

    Single-query faiss search runs on one thread: a single query is too little work
    to split, and OpenMP threads that wait for each other on cores other processes
    keep busy make it many times slower (``docs/benchmarks.md``). faiss and
    torch share one OpenMP runtime, so the thread count is set for the search only
    and given back afterwards; otherwise every model call after loading an index
    (the RAG ablation's scoring) would run on one core.
    """

    def __init__(self, chunks: Sequence[Chunk], dense, bm25: BM25, manifest: dict, embedder=None):
        import faiss

        graph = getattr(faiss.downcast_index(dense), "hnsw", None)
        if graph is not None:  # faiss's default of 16 candidates loses recall at k >= 10
            graph.efSearch = max(graph.efSearch, HNSW_EF_SEARCH)
        self.chunks = chunks
        self.dense = dense
        self.bm25 = bm25
        self.manifest = manifest
        self._embedder = embedder

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def embedder(self):
        """The model that embedded the chunks, loaded on the first dense query."""
        if self._embedder is None:
            from tutorlm.rag.embed import load_embedder

            self._embedder = load_embedder(self.manifest["embedder"]["name"])
        return self._embedder

    def embed_query(self, query: str) -> np.ndarray:
        """The query's unit vector, ``(1, dim)`` float32."""
        vector = self.embedder.embed([query])
        if vector.shape[1] != self.dense.d:
            raise ValueError(
                f"the query embedder gives {vector.shape[1]}-d vectors, the index holds "
                f"{self.dense.d}-d ones from {self.manifest['embedder']['name']!r}"
            )
        return vector

    def search(self, query: str, k: int = 3, mode: SearchMode = "hybrid") -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first.

        Raises:
            ValueError: an unknown mode or ``k < 1``.
        """
        if mode not in get_args(SearchMode):
            raise ValueError(f"mode must be one of {get_args(SearchMode)}, got {mode!r}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if mode == "bm25":
            ranked = self.bm25.top(query, k)
        elif mode == "dense":
            ranked = self.dense_top(self.embed_query(query), k)
        else:
            depth = max(k, FUSION_DEPTH)
            ranked = fuse(
                [self.dense_top(self.embed_query(query), depth), self.bm25.top(query, depth)], k
            )
        return [Hit(self.chunks[row], score) for row, score in ranked]

    def search_many(
        self, queries: Sequence[str], k: int = 3, mode: SearchMode = "hybrid"
    ) -> list[list[Hit]]:
        """:meth:`search` for many queries, their embeddings computed in one batch (a
        data build or an evaluation asks hundreds of questions: one model call each
        would cost a forward pass of overhead per question)."""
        if mode == "bm25" or not queries:
            return [self.search(query, k, mode) for query in queries]
        vectors = self.embedder.embed(list(queries))
        if vectors.shape[1] != self.dense.d:
            self.embed_query(queries[0])  # raises the dimension error
        results = []
        for query, vector in zip(queries, vectors, strict=True):
            if mode == "dense":
                ranked = self.dense_top(vector[None, :], k)
            else:
                depth = max(k, FUSION_DEPTH)
                ranked = fuse(
                    [self.dense_top(vector[None, :], depth), self.bm25.top(query, depth)], k
                )
            results.append([Hit(self.chunks[row], score) for row, score in ranked])
        return results

    def dense_top(self, query_vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """``(row, cosine)`` of the ``k`` nearest chunks to a unit query vector."""
        scores, rows = _single_threaded(self.dense.search, np.asarray(query_vector, np.float32), k)
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]


def fuse(rankings: list[list[tuple[int, float]]], k: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked ``(row, score)`` lists: the ``k`` best
    ``(row, sum of 1 / (RRF_K + rank))``, rank counted from 1; ties keep the row
    that comes first in the first list it appears in."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, start=1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: -item[1])[:k]


def load_index(index_dir: str | Path, *, embedder=None) -> Index:
    """Load an index directory written by ``build_index`` / ``tutorlm index build``.

    Args:
        index_dir: the directory holding ``manifest.json``.
        embedder: the embedding model to embed queries with; default: the one named
            in the manifest, loaded on the first dense or hybrid query.

    Raises:
        RagIndexError: not an index directory, or its files disagree.
    """
    live = load_live(index_dir)
    return Index(live.chunks, live.dense, BM25(live.terms), live.manifest, embedder)
