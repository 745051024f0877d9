"""Find the files to index and read them into sections, or say why a file is skipped.

A course folder holds more than notes: images, slides exported badly, empty
placeholders. None of them may stop a build. Each is skipped with a reason that
the index's manifest keeps, so a user can see what was left out and why.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tutorlm.errors import TutorlmError
from tutorlm.rag.config import BUNDLED_NOTES

KINDS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text"}
KINDS.update({".rst": "text", ".pdf": "pdf"})
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


class SourceError(TutorlmError, ValueError):
    """A source argument that names nothing, or two files that would share a name."""


class SkipFile(Exception):
    """A file that cannot be indexed; the message is the reason kept in the manifest."""


@dataclass(frozen=True)
class SourceFile:
    """A file to index: where it is, the name users see, and how to read it."""

    path: Path
    source: str
    kind: str | None  # None: not a known extension, sniffed as text


@dataclass(frozen=True)
class Section:
    """A stretch of a file under one heading (Markdown) or on one page (PDF)."""

    text: str
    heading: str
    page: int | None


def bundled_notes_dir() -> Path:
    """The demo course notes shipped inside the package."""
    return Path(str(resources.files("tutorlm") / "assets" / "notes"))


def discover(sources: list[str | Path]) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """Expand files and folders into the files to read, plus ``(path, reason)`` skips.

    A folder contributes its known file types, recursively, named ``<folder>/<relative
    path>``; other files in it are skipped as unsupported, hidden ones silently. A file
    named directly is read whatever its extension (sniffed as text when unknown).

    Symbolic links inside a folder are followed only to files inside the sources
    given: a link such as ``passwd.txt -> /etc/passwd`` would put a file the user
    never chose into the index and its citations. Links out of the sources, dangling
    links, links to folders (their files are indexed where they live, or not at all),
    FIFOs and devices (reading a FIFO blocks forever) are skipped with the reason.

    Raises:
        SourceError: a source that does not exist, or two files with the same name.
    """
    found: dict[str, SourceFile] = {}
    skipped: list[tuple[str, str]] = []

    def add(item: SourceFile) -> None:
        other = found.get(item.source)
        if other is not None and other.path != item.path:
            raise SourceError(
                f"{other.path} and {item.path} would both be indexed as {item.source!r}; "
                "index one of their folders instead, or rename one"
            )
        found[item.source] = item

    paths = []
    for given in sources:
        path = bundled_notes_dir() if str(given) == BUNDLED_NOTES else Path(given).expanduser()
        if not path.exists():
            raise SourceError(f"{given}: no such file or folder to index")
        paths.append(path)
    roots = [path.resolve() for path in paths]
    for path, root in zip(paths, roots, strict=True):
        if not path.is_dir():
            add(SourceFile(root, path.name, KINDS.get(path.suffix.lower())))
            continue
        for file in _walk(root):
            name = f"{root.name}/{file.relative_to(root).as_posix()}"
            reason = _not_indexable(file, roots)
            if reason is None and KINDS.get(file.suffix.lower()) is None:
                reason = f"unsupported file type {file.suffix or '(none)'!r}"
            if reason is None:
                add(SourceFile(file, name, KINDS[file.suffix.lower()]))
            else:
                skipped.append((name, reason))
    return [found[name] for name in sorted(found)], skipped


def _walk(root: Path) -> list[Path]:
    """Every entry under ``root`` that is not a folder (links to folders included),
    hidden names left out, without following links."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        dirs[:] = [d for d in dirs if d not in links]
        entries += [Path(folder, name) for name in [*files, *links] if not name.startswith(".")]
    return sorted(entries)


def _not_indexable(file: Path, roots: list[Path]) -> str | None:
    """Why a file found in a folder cannot be read safely, or ``None``."""
    if file.is_symlink():
        if not file.exists():
            return "dangling symbolic link"
        target = file.resolve()
        if not any(target.is_relative_to(root) for root in roots):
            return "symbolic link leading outside the sources"
        if target.is_dir():
            return "symbolic link to a folder (not followed)"
    try:
        mode = file.stat().st_mode
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if stat.S_ISFIFO(mode):
        return "not a regular file (FIFO)"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def read_sections(file: SourceFile) -> list[Section]:
    """The file's text as sections.

    Raises:
        SkipFile: unreadable, empty, binary, not UTF-8, or a PDF without text.
    """
    if file.kind == "pdf":
        sections = _pdf_sections(file.path)
    else:
        text = _read_text(file.path)
        is_markdown = file.kind == "markdown"
        sections = markdown_sections(text) if is_markdown else [Section(text, "", None)]
    sections = [section for section in sections if section.text.strip()]
    if not sections:
        raise SkipFile("no text to index" if file.kind == "pdf" else "empty file")
    return sections


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SkipFile(f"unreadable: {error.strerror or error}") from None
    if not data.strip():
        raise SkipFile("empty file")
    if b"\x00" in data[:8192]:
        raise SkipFile("binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SkipFile(f"not UTF-8 text (byte {error.start}): binary?") from None


def _pdf_sections(path: Path) -> list[Section]:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns on every odd object
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkipFile("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except SkipFile:
        raise
    except Exception as error:  # pypdf raises many types on broken files
        raise SkipFile(f"unreadable PDF: {type(error).__name__}: {error}") from None
    return [Section(text, "", number) for number, text in enumerate(pages, start=1)]


def markdown_sections(text: str) -> list[Section]:
    """Split Markdown at ATX headings (``#`` .. ``######``), outside fenced code.

    Each section keeps its heading line, so the heading's words are searchable, and
    knows its heading path (``"Limits > One-sided limits"``). A section that is only
    a heading line is dropped: its title lives on in its children's paths. YAML front
    matter is left out.
    """
    lines = text.splitlines(keepends=True)
    if lines and lines[0].strip() == "---":
        closing = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
        if closing is not None:
            lines = lines[closing + 1 :]
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    current: list[str] = []
    in_fence = False

    def close() -> None:
        body = "".join(current)
        has_body = any(line.strip() and not _HEADING.match(line) for line in current)
        if body.strip() and (has_body or not path):
            sections.append(Section(body, " > ".join(title for _, title in path), None))

    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\n"))
        if match:
            close()
            current = []
            level = len(match.group(1))
            path = [(lvl, title) for lvl, title in path if lvl < level]
            path.append((level, match.group(2)))
        current.append(line)
    close()
    return sections
