"""Build an index directory from course files, incrementally.

A build hashes every file (after a size and modification-time check, as git
does): unchanged files keep their rows; changed and new files are re-read,
re-chunked and re-embedded into one new segment; files that are gone are dropped.
Changing the chunking, the embedding model or the faiss type rebuilds everything.
The layout and the atomic switch are described in ``rag/store.py``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tutorlm.data.formats import file_sha256
from tutorlm.rag.chunk import chunk_sections, search_text
from tutorlm.rag.config import IndexSettings
from tutorlm.rag.records import Chunk
from tutorlm.rag.sources import SkipFile, discover, read_sections
from tutorlm.rag.store import (
    FORMAT,
    FreshSegment,
    RagIndexError,
    Segment,
    built_serial,
    combine,
    live_pieces,
    load_live,
    previous_index,
    read_manifest,
    write_manifest,
    write_segment,
)

__all__ = ["BuildReport", "RagIndexError", "build_index", "load_live", "read_manifest"]

MAX_SEGMENTS = 8
"""More segments than this are compacted into one (each costs a little at load)."""
MAX_DEAD_SHARE = 0.5
"""Compact when more than this share of the stored rows is dead."""


@dataclass
class BuildReport:
    """What a build did; the same facts go into the manifest's ``last_build``."""

    out_dir: Path
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedded_chunks: int = 0
    n_chunks: int = 0
    seconds: float = 0.0
    full_rebuild: str | None = None
    """Why nothing could be reused (``None`` when old rows were reused)."""
    compacted: bool = False
    """Whether every live row was rewritten into one segment."""


def _reusable(previous: dict | None, settings: dict) -> bool:
    """Whether the old index's rows can be kept (same chunking, model and faiss type)."""
    return previous is not None and previous["settings"] == settings


def build_index(
    sources: list[str | Path],
    out_dir: str | Path,
    *,
    settings: IndexSettings | None = None,
    embedder=None,
    log=None,
    progress: bool = False,
) -> BuildReport:
    """Index ``sources`` (files and folders) into ``out_dir``, reusing what is unchanged.

    Args:
        sources: files and folders; ``bundled:notes`` names the demo notes.
        out_dir: the index directory, created or updated.
        settings: chunking, embedding model and faiss type (defaults otherwise).
        embedder: an object with ``name``, ``dim``, ``embed`` and ``token_spans``
            (see ``rag.embed.Embedder``); default: load ``settings.embedding_model``
            when the first file needs embedding.
        log: called with one line of progress at a time.
        progress: show a progress bar over the files on stderr (when it is a terminal).

    Raises:
        SourceError: a source that does not exist.
        RagIndexError: ``out_dir`` is a file or a folder that is not an index (checked
            before anything is read), no indexable text at all, or a faiss type that
            cannot be built.
    """
    started = time.perf_counter()
    settings = settings or IndexSettings()
    out_dir = Path(out_dir)
    log = log or (lambda line: None)
    name = embedder.name if embedder is not None else settings.embedding_model
    # the size cap decides which files are read, not how: changing it adds or drops
    # those files like any other change, with no re-embedding of the rest
    settings_dict = settings.model_dump(exclude={"max_file_bytes"}) | {"embedding_model": name}
    on_disk, full_reason = previous_index(out_dir)
    files, skipped = discover(sources)
    previous = on_disk if _reusable(on_disk, settings_dict) else None
    if on_disk is not None and previous is None:
        full_reason = "settings or embedding model changed"
    report = BuildReport(out_dir, skipped=skipped, full_rebuild=full_reason)
    old_files = previous["files"] if previous else {}
    lazy = _LazyEmbedder(embedder, settings.embedding_model, log)
    entries, new_chunks = _scan(files, old_files, settings, lazy, report, progress)
    report.removed = sorted(set(old_files) - set(entries))
    report.skipped.sort()

    if not entries:
        reasons = "; ".join(f"{source}: {reason}" for source, reason in report.skipped[:5])
        raise RagIndexError(f"nothing to index in {', '.join(map(str, sources))}. {reasons}")
    old_skipped = [(s["source"], s["reason"]) for s in previous["skipped"]] if previous else None
    if not (report.added or report.changed or report.removed) and report.skipped == old_skipped:
        report.n_chunks = previous["n_chunks"]
        report.seconds = round(time.perf_counter() - started, 3)
        return report  # up to date: nothing is rewritten

    all_new = [chunk for chunks in new_chunks.values() for chunk in chunks]
    fresh = None
    if all_new:
        log(f"embedding {len(all_new)} chunks from {len(new_chunks)} files")
        fresh = FreshSegment(all_new, lazy.get().embed([search_text(c) for c in all_new]))
    report.embedded_chunks = len(all_new)

    manifest = _write_segments(out_dir, previous, entries, new_chunks, fresh, report)
    manifest |= {
        "format": FORMAT,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings_dict,
        "embedder": {"name": name, "dim": int(manifest.pop("dim"))},
        "n_chunks": sum(entry["chunks"] for entry in entries.values()),
        "files": entries,
        "skipped": [{"source": s, "reason": r} for s, r in report.skipped],
        "last_build": {
            "added": report.added,
            "changed": report.changed,
            "removed": report.removed,
            "unchanged": len(report.unchanged),
            "embedded_chunks": report.embedded_chunks,
            "full_rebuild": report.full_rebuild,
            "compacted": report.compacted,
        },
    }
    if settings.index_factory != "Flat":
        manifest["dense"] = _write_dense(out_dir, manifest, settings.index_factory)
    write_manifest(out_dir, manifest, on_disk)
    report.n_chunks = manifest["n_chunks"]
    report.seconds = round(time.perf_counter() - started, 3)
    return report


class _LazyEmbedder:
    """The embedder given, or the settings' model, loaded when a file first needs it."""

    def __init__(self, embedder, spec: str, log):
        self.embedder, self.spec, self.log = embedder, spec, log

    def get(self):
        if self.embedder is None:
            from tutorlm.rag.embed import load_embedder

            self.log(f"loading embedding model {self.spec}")
            self.embedder = load_embedder(self.spec)
        return self.embedder


def _progress(files: list, enabled: bool):
    """``files``, under a tqdm bar on stderr when asked for and stderr is a terminal."""
    if not enabled:
        return files
    from tqdm import tqdm

    return tqdm(
        files, desc="index", unit="file", leave=False, file=sys.stderr, dynamic_ncols=True,
        disable=not sys.stderr.isatty(),
    )  # fmt: skip


def _scan(files, old_files: dict, settings, lazy: _LazyEmbedder, report: BuildReport, progress):
    """Each file's manifest entry (in source order) and the chunks of changed and new files.

    A file whose size and modification time match its entry is unchanged without
    being read; otherwise its sha256 decides. A file over ``settings.max_file_bytes``
    is skipped before it is read.
    """
    entries: dict[str, dict] = {}
    new_chunks: dict[str, list[Chunk]] = {}
    for file in _progress(files, progress):
        old = old_files.get(file.source)
        try:
            stat = file.path.stat()
            if stat.st_size > settings.max_file_bytes:
                report.skipped.append((file.source, _too_large(stat.st_size, settings)))
                continue
            same_stat = old is not None and (old["bytes"], old["mtime_ns"]) == (
                stat.st_size,
                stat.st_mtime_ns,
            )
            digest = old["sha256"] if same_stat else file_sha256(file.path)
        except OSError as error:
            report.skipped.append((file.source, f"unreadable: {error.strerror or error}"))
            continue
        if old is not None and old["sha256"] == digest:
            entries[file.source] = old | {"path": str(file.path), "mtime_ns": stat.st_mtime_ns}
            report.unchanged.append(file.source)
            continue
        try:
            sections = read_sections(file)
        except SkipFile as reason:
            report.skipped.append((file.source, str(reason)))
            continue
        chunks = chunk_sections(
            sections,
            file.source,
            lazy.get().token_spans,
            chunk_tokens=settings.chunk_tokens,
            overlap=settings.chunk_overlap,
        )
        new_chunks[file.source] = chunks
        pages = max((s.page or 0 for s in sections), default=0) or None
        entries[file.source] = {
            "path": str(file.path),
            "sha256": digest,
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "kind": file.kind or "text",
            "chunks": len(chunks),
        } | ({"pages": pages} if pages else {})
        (report.changed if old is not None else report.added).append(file.source)
    return entries, new_chunks


def _too_large(size: int, settings) -> str:
    return (
        f"larger than the size cap ({_bytes(size)} > {_bytes(settings.max_file_bytes)}); "
        "raise max_file_bytes (--max-file-bytes) to index it"
    )


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n:,} bytes"


def _write_segments(out_dir, previous, entries, new_chunks, fresh, report) -> dict:
    """Write the new segment (or, when compacting, the only one) and point ``entries``
    at their rows. Returns the manifest's ``segments``, ``segment_rows``, ``serial``
    (numbers this build's files, so no build overwrites another's) and the ``dim``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    taken = [serial for p in out_dir.iterdir() if (serial := built_serial(p)) is not None]
    serial = max([previous["serial"] if previous else 0, *taken]) + 1
    segment_rows = dict(previous["segment_rows"]) if previous else {}
    kept = [s for s in (previous["segments"] if previous else []) if _referenced(s, entries)]
    stored = sum(segment_rows[s] for s in kept)
    live = sum(e["chunks"] for source, e in entries.items() if source not in new_chunks)
    report.compacted = bool(kept) and (
        stored - live > MAX_DEAD_SHARE * stored or len(kept) + (fresh is not None) > MAX_SEGMENTS
    )
    fresh_pieces, position = [], 0
    for source, chunks in new_chunks.items():
        fresh_pieces.append((source, fresh, position, position + len(chunks)))
        position += len(chunks)
    if report.compacted:
        old = {s: Segment(out_dir / s) for s in kept}
        by_source = {p[0]: p for p in fresh_pieces}
        pieces = [
            by_source.get(source) or (source, old[e["segment"]], *e["rows"])
            for source, e in entries.items()
        ]
        kept, fresh_pieces = [], pieces
    if fresh_pieces:
        segment = f"seg-{serial:04d}"
        store, vectors, terms, rows = combine(fresh_pieces)
        write_segment(out_dir / segment, store, vectors, terms)
        for source, span in rows.items():
            entries[source] = entries[source] | {"segment": segment, "rows": span}
        segment_rows[segment] = len(vectors)
        kept.append(segment)
        dim = vectors.shape[1]
    else:
        dim = previous["embedder"]["dim"]
    return {
        "segments": kept,
        "segment_rows": {s: segment_rows[s] for s in kept},
        "serial": serial,
        "dim": dim,
    }


def _referenced(segment: str, entries: dict) -> bool:
    return any(entry.get("segment") == segment for entry in entries.values())


def _write_dense(out_dir: Path, manifest: dict, factory: str) -> str:
    """One faiss index of type ``factory`` over every live row, in load order."""
    import faiss

    _, vectors, _, _ = combine(live_pieces(out_dir, manifest))
    try:
        dense = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not dense.is_trained:
            dense.train(vectors)
        dense.add(np.ascontiguousarray(vectors))
    except RuntimeError as error:
        last_line = (str(error).strip().splitlines() or [""])[-1]
        raise RagIndexError(
            f"faiss index {factory!r} cannot be built over {len(vectors)} vectors: {last_line}"
        ) from None
    name = f"dense-{manifest['serial']:04d}.faiss"
    staging = out_dir / f".dense-{manifest['serial']:04d}.tmp"
    faiss.write_index(dense, str(staging))
    os.replace(staging, out_dir / name)
    return name
