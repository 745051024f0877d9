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

A build deletes only what a build writes: the segments and dense files the old
manifest names, and the left-overs of a build that was killed (``seg-NNNN`` folders
holding only segment files, ``.seg-NNNN.tmp`` staging folders, ``dense-NNNN.faiss``,
temporary manifests). A folder holding anything else is not an index, and a build
into it is refused before anything is read or written, as ``git clone`` refuses a
folder that is not empty; an index folder with other files in it keeps them.
"""

from __future__ import annotations

import json
import os
import re
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
_BUILT = re.compile(
    r"(?:seg-(\d{4,})|\.seg-(\d{4,})\.tmp|dense-(\d{4,})\.faiss|\.dense-(\d{4,})\.tmp)"
)
"""Names a build writes: a segment, its staging folder, a dense index, its temporary."""
_MANIFEST_TMP = re.compile(r"\.manifest\.json\.\w+")
"""The temporary file of a manifest being written (``atomic_write_text``)."""


class RagIndexError(TutorlmError):
    """An index directory that cannot be built or read, with the reason."""


class Segment:
    """One segment folder; each part is read when first used.

    A damaged part (truncated, overwritten) raises ``RagIndexError`` naming the file,
    whatever the library reading it raised.
    """

    def __init__(self, path: Path):
        self.path = path

    @cached_property
    def store(self) -> tuple[bytes, np.ndarray]:
        """The chunk store's bytes and the ``n + 1`` byte offsets where its lines start."""
        path = self.path / "chunks.jsonl"
        data = _read_part(path, Path.read_bytes)
        if data and not data.endswith(b"\n"):
            raise RagIndexError(f"{path}: damaged (its last line is cut off); rebuild the index")
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A) + 1
        return data, np.concatenate([[0], ends])  # JSON escapes newlines inside strings

    @cached_property
    def dense(self):
        import faiss

        return _read_part(self.path / "dense.faiss", lambda path: faiss.read_index(str(path)))

    def vectors(self) -> np.ndarray:
        """``(rows, dim)`` float32, a view into the faiss index (no copy)."""
        import faiss

        flat = faiss.downcast_index(self.dense)
        if not isinstance(flat, faiss.IndexFlat):
            raise RagIndexError(f"{self.path / 'dense.faiss'}: damaged (not a flat index)")
        values = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)
        return np.asarray(values).reshape(flat.ntotal, flat.d)

    @cached_property
    def terms(self) -> TermCounts:
        return _read_part(self.path / "bm25.npz", TermCounts.load)


def _read_part(path: Path, read):
    """``read(path)``, or ``RagIndexError`` naming the file and the reader's last line."""
    try:
        return read(path)
    except RagIndexError:
        raise
    except Exception as error:  # faiss, numpy and zipfile raise many types on damaged files
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise RagIndexError(f"{path}: damaged ({lines[-1][:160]}); rebuild the index") from None


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
        try:
            return Chunk(**json.loads(line))
        except (ValueError, TypeError) as error:
            raise RagIndexError(f"chunk store row {row}: damaged ({error}); rebuild") from None


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
    """The manifest of an index directory, checked for the fields a load relies on.

    Raises:
        RagIndexError: no manifest (not an index), an unreadable or damaged one, or
            one of an unknown format.
    """
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise RagIndexError(
            f"{index_dir}: not a RAG index (no {MANIFEST}); build one with "
            "`tutorlm index build SOURCES... --out DIR`"
        )
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as error:
        detail = getattr(error, "strerror", None) or str(error).splitlines()[0][:80]
        raise RagIndexError(f"{path}: unreadable ({detail}); rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise RagIndexError(f"{path}: format {found!r}, expected {FORMAT!r}; rebuild the index")
    problem = _manifest_problem(manifest)
    if problem:
        raise RagIndexError(f"{path}: damaged ({problem}); rebuild the index")
    return manifest


_FIELDS = {"segments": list, "segment_rows": dict, "files": dict, "skipped": list}
_FIELDS |= {"n_chunks": int, "serial": int, "embedder": dict, "settings": dict}


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a manifest's structure, or ``None``.

    Names are checked too: a manifest names folders a build may later delete, so a
    segment must be one of a build's own names (never ``../notes``).
    """
    for name, kind in _FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            return f"{name!r} missing or not a {kind.__name__}"
    names = [*manifest["segments"], *([manifest["dense"]] if manifest.get("dense") else [])]
    for name in names:
        if not isinstance(name, str) or not _BUILT.fullmatch(name) or name.startswith("."):
            return f"segment name {name!r}"
    for source, entry in manifest["files"].items():
        if not isinstance(entry, dict) or entry.get("segment") not in manifest["segments"]:
            return f"file {source!r} names no listed segment"
        rows = entry.get("rows")
        if not (isinstance(rows, list) and len(rows) == 2 and all(type(r) is int for r in rows)):
            return f"file {source!r} has no rows [start, end]"
    return None


def built_serial(path: Path) -> int | None:
    """The serial of a file or folder a build writes, or ``None`` for anything else.

    A segment folder counts only while it holds nothing but segment files, so a
    user's ``seg-0001/`` of photos is never taken for one.
    """
    match = _BUILT.fullmatch(path.name)
    if match is None or path.is_symlink():
        return None
    serial = int(next(group for group in match.groups() if group))
    if path.name.startswith(("seg-", ".seg-")):
        if not path.is_dir():
            return None
        if any(not p.is_file() or p.name not in SEGMENT_FILES for p in path.iterdir()):
            return None
    elif not path.is_file():
        return None
    return serial


def _is_built(path: Path) -> bool:
    return built_serial(path) is not None or bool(_MANIFEST_TMP.fullmatch(path.name))


def previous_index(out_dir: Path) -> tuple[dict | None, str | None]:
    """The index already in ``out_dir`` and ``None``, or ``None`` and why there is none.

    Raises:
        RagIndexError: ``out_dir`` is a file, or a folder holding files that no build
            wrote and no index manifest (building there could overwrite them).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise RagIndexError(f"{out_dir}: exists and is not a folder; --out names an index folder")
    if not out_dir.is_dir():
        return None, "no previous index"
    reason = "no previous index"
    if (out_dir / MANIFEST).exists():
        try:
            return read_manifest(out_dir), None
        except RagIndexError as error:
            reason = f"previous index unreadable ({error})"
    foreign = sorted(
        p.name
        for p in out_dir.iterdir()
        if not _is_built(p) and not (p.name == MANIFEST and _ours(p))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise RagIndexError(
            f"{out_dir}: not an index folder (it holds {shown}); tutorlm index build "
            "writes into a new or empty folder, or one it built"
        )
    return None, reason


def _ours(manifest_path: Path) -> bool:
    """Whether a manifest that cannot be used is still a damaged or older index's own."""
    try:
        data = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return True  # unreadable bytes: only a damaged index's, when all else is a build's
    return isinstance(data, dict) and str(data.get("format", "")).startswith("tutorlm-rag-index")


def write_manifest(index_dir: Path, manifest: dict, previous: dict | None) -> None:
    """Replace the manifest in one rename, then remove what only builds wrote and it no
    longer names: the previous manifest's segments, and a killed build's left-overs."""
    # one line: with indent= json falls back to its pure-Python encoder, whose time
    # grows with the number of files; without it the C encoder writes the manifest
    atomic_write_text(index_dir / MANIFEST, json.dumps(manifest, ensure_ascii=False) + "\n")
    keep = set(manifest["segments"]) | {manifest.get("dense")}
    listed = set(previous["segments"]) | {previous.get("dense")} if previous else set()
    newer_than = previous["serial"] if previous else -1
    for path in index_dir.iterdir():
        if path.name in keep:
            continue
        serial = built_serial(path)
        stale = path.name in listed or (serial is not None and serial > newer_than)
        if stale and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif stale or _MANIFEST_TMP.fullmatch(path.name):
            path.unlink(missing_ok=True)


def live_pieces(index_dir: Path, manifest: dict, segments: dict | None = None) -> list[Piece]:
    """Every live file's rows, segment by segment in manifest order."""
    segments = segments or {name: Segment(index_dir / name) for name in manifest["segments"]}
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
    segments = {name: Segment(index_dir / name) for name in manifest["segments"]}
    for name, segment in segments.items():
        missing = [f for f in SEGMENT_FILES if not (index_dir / name / f).is_file()]
        if missing:
            raise RagIndexError(f"{index_dir / name}: missing {', '.join(missing)}; rebuild")
        sizes = (len(segment.store[1]) - 1, segment.dense.ntotal, segment.terms.n_docs)
        if set(sizes) != {manifest["segment_rows"].get(name)}:
            raise RagIndexError(
                f"{index_dir / name}: {sizes[0]} chunks, {sizes[1]} vectors and {sizes[2]} BM25 "
                f"rows, the manifest says {manifest['segment_rows'].get(name)}; rebuild the index"
            )
    chunks, vectors, terms, _ = combine(live_pieces(index_dir, manifest, segments))
    if manifest.get("dense"):
        path = index_dir / manifest["dense"]
        dense = _read_part(path, lambda path: faiss.read_index(str(path)))
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
