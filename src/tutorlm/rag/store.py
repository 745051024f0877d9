"""An index directory on disk: immutable segments, and a manifest naming the live rows.

::

    manifest.json          settings, embedder, segments, per-file sha256 / segment / rows, skips
    seg-0001/chunks.jsonl  a segment's chunk store: one JSON chunk a line
    seg-0001/dense.faiss   its vectors, a faiss IndexFlatIP (unit vectors: inner product = cosine)
    seg-0001/bm25.npz      its BM25 term counts (CSR) and vocabulary
    seg-0002/...           the files (re-)embedded by a later build
    dense-0003.faiss       only for faiss types other than Flat: one index over all live rows

A segment is written once and never changed. A rebuild writes the chunks of changed
and new files as one new segment, and a new manifest whose files point at their
rows; rows no file points at any more are dead. So a rebuild costs what changed,
not the size of the index: one changed file among 100,000 chunks writes one small
segment and a manifest. When dead rows pass half of the stored ones, or segments
pile up, a build compacts everything into one segment. The manifest is replaced in
one rename after the segments it names are complete, so a reader sees the old index
or the new one, never a mixture; segments no manifest names are then removed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tutorlm.data.formats import atomic_write_text
from tutorlm.errors import TutorlmError
from tutorlm.rag.bm25 import TermCounts
from tutorlm.rag.chunk import search_text
from tutorlm.rag.records import Chunk

FORMAT = "tutorlm-rag-index/2"
MANIFEST = "manifest.json"
SEGMENT_FILES = ("chunks.jsonl", "dense.faiss", "bm25.npz")


class RagIndexError(TutorlmError):
    """An index directory that cannot be built or read, with the reason."""


class Segment:
    """One segment folder; each part is read when first used."""

    def __init__(self, path: Path):
        self.path = path

    @cached_property
    def store(self) -> tuple[bytes, np.ndarray]:
        """The chunk store's bytes and the ``n + 1`` byte offsets where its lines start."""
        data = (self.path / "chunks.jsonl").read_bytes()
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A) + 1
        return data, np.concatenate([[0], ends])  # JSON escapes newlines inside strings

    @cached_property
    def dense(self):
        import faiss

        return faiss.read_index(str(self.path / "dense.faiss"))

    def vectors(self) -> np.ndarray:
        """``(rows, dim)`` float32, a view into the faiss index (no copy)."""
        import faiss

        flat = faiss.downcast_index(self.dense)
        values = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)
        return np.asarray(values).reshape(flat.ntotal, flat.d)

    @cached_property
    def terms(self) -> TermCounts:
        return TermCounts.load(self.path / "bm25.npz")


class FreshSegment:
    """Newly embedded chunks in memory, read like a ``Segment``."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray):
        lines = [(json.dumps(c.to_dict(), ensure_ascii=False) + "\n").encode() for c in chunks]
        self.store = (b"".join(lines), np.cumsum([0] + [len(line) for line in lines]))
        self._vectors = vectors
        self.terms = TermCounts.from_texts([search_text(c) for c in chunks])

    def vectors(self) -> np.ndarray:
        return self._vectors


Piece = tuple[str, object, int, int]
"""``(source, segment, start, end)``: a file's rows ``[start, end)`` in a segment."""


class ChunkStore(Sequence):
    """The chunks of a store's JSON lines, each parsed when it is read.

    Search touches k chunks per query; parsing all 100,000 at load took longer
    than every other step of loading together.
    """

    def __init__(self, data: bytes, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> Chunk:
        if not -len(self) <= row < len(self):
            raise IndexError(f"chunk {row} of {len(self)}")
        row %= len(self)
        line = self.data[self.offsets[row] : self.offsets[row + 1]]
        return Chunk(**json.loads(line))


def combine(pieces: list[Piece]) -> tuple[ChunkStore, np.ndarray, TermCounts, dict[str, list[int]]]:
    """The pieces' rows as one: chunk store, vectors, term counts, and each file's
    ``[start, end)`` in the result.

    Neighbouring pieces of one segment are copied as one run: a few large slices
    instead of one copy per file.
    """
    runs: list[list] = []
    rows: dict[str, list[int]] = {}
    position = 0
    for source, segment, start, end in pieces:
        rows[source] = [position, position + end - start]
        position += end - start
        if runs and runs[-1][0] is segment and runs[-1][2] == start:
            runs[-1][2] = end
        else:
            runs.append([segment, start, end])
    parts, offsets, size = [], [np.zeros(1, dtype=np.int64)], 0
    for segment, start, end in runs:
        data, starts = segment.store
        parts.append(memoryview(data)[starts[start] : starts[end]])
        offsets.append(starts[start + 1 : end + 1] - starts[start] + size)
        size += int(starts[end] - starts[start])
    store = ChunkStore(b"".join(parts), np.concatenate(offsets))
    vectors = np.concatenate([seg.vectors()[a:b] for seg, a, b in runs])
    terms = TermCounts.concatenate(
        [TermCounts(seg.terms.vocab, seg.terms.counts[a:b]) for seg, a, b in runs]
    )
    return store, vectors, terms.without_unused_terms(), rows


def write_segment(path: Path, store: ChunkStore, vectors: np.ndarray, terms: TermCounts) -> int:
    """Write a segment folder (complete or not at all); returns its size in bytes."""
    import faiss

    staging = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "chunks.jsonl").write_bytes(store.data)
    dense = faiss.IndexFlatIP(vectors.shape[1])
    dense.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(dense, str(staging / "dense.faiss"))
    terms.save(staging / "bm25.npz")
    size = sum(p.stat().st_size for p in staging.iterdir())
    os.replace(staging, path)
    return size


def read_manifest(index_dir: str | Path) -> dict:
    """The manifest of an index directory.

    Raises:
        RagIndexError: no manifest (not an index), or one of an unknown format.
    """
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise RagIndexError(
            f"{index_dir}: not a RAG index (no {MANIFEST}); build one with "
            "`tutorlm index build SOURCES... --out DIR`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise RagIndexError(
            f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild the index"
        )
    return manifest


def write_manifest(index_dir: Path, manifest: dict) -> None:
    """Replace the manifest in one rename, then remove what it no longer names."""
    # one line: with indent= json falls back to its pure-Python encoder, whose time
    # grows with the number of files; without it the C encoder writes the manifest
    atomic_write_text(index_dir / MANIFEST, json.dumps(manifest, ensure_ascii=False) + "\n")
    keep = set(manifest["segments"]) | {manifest.get("dense")}
    for path in index_dir.iterdir():
        stale = path.name.lstrip(".").startswith(("seg-", "dense-")) and path.name not in keep
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif stale:
            path.unlink(missing_ok=True)


def live_pieces(index_dir: Path, manifest: dict) -> list[Piece]:
    """Every live file's rows, segment by segment in manifest order."""
    segments = {name: Segment(index_dir / name) for name in manifest["segments"]}
    by_segment: dict[str, list[tuple[int, int, str]]] = {name: [] for name in segments}
    for source, entry in manifest["files"].items():
        by_segment[entry["segment"]].append((*entry["rows"], source))
    return [
        (source, segments[name], start, end)
        for name, spans in by_segment.items()
        for start, end, source in sorted(spans)
    ]


@dataclass
class Loaded:
    """The live rows of an index, in memory, in search order."""

    manifest: dict
    chunks: ChunkStore
    vectors: np.ndarray
    terms: TermCounts
    dense: object  # faiss.Index over ``vectors``


def load_live(index_dir: str | Path) -> Loaded:
    """Read an index directory's live rows and check that its parts agree.

    Raises:
        RagIndexError: not an index, a missing segment, or parts of unequal length.
    """
    import faiss

    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    for name in manifest["segments"]:
        missing = [f for f in SEGMENT_FILES if not (index_dir / name / f).is_file()]
        if missing:
            raise RagIndexError(f"{index_dir / name}: missing {', '.join(missing)}; rebuild")
    chunks, vectors, terms, _ = combine(live_pieces(index_dir, manifest))
    if manifest.get("dense"):
        dense = faiss.read_index(str(index_dir / manifest["dense"]))
    else:
        dense = faiss.IndexFlatIP(vectors.shape[1])
        dense.add(vectors)
    n = manifest["n_chunks"]
    if not len(chunks) == len(vectors) == terms.n_docs == dense.ntotal == n:
        raise RagIndexError(
            f"{index_dir}: {len(chunks)} chunks, {len(vectors)} vectors, {terms.n_docs} BM25 "
            f"rows and {dense.ntotal} indexed vectors disagree with the manifest's {n}"
        )
    return Loaded(manifest, chunks, vectors, terms, dense)
