"""The sentences of an index's notes, each with the section and chunk it stands in.

Questions are drawn from single sentences: a sentence is short enough to quote as
the explanation, and a question about one can be checked against it. Chunks of one
section overlap, so a sentence met again in a later chunk is kept once, with the
first chunk that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z$(])")
"""A sentence ends at ``.``, ``!`` or ``?`` followed by space and a capital (or a
formula): "9.81" and "e.g. the" do not end one."""
_HEADING_LINE = re.compile(r"^#{1,6}\s")
MIN_WORDS = 6
"""Shorter sentences ("It is a vector.") lean on the one before: not a passage."""


@dataclass(frozen=True)
class Passage:
    """One sentence of the notes.

    Attributes:
        text: the sentence, verbatim (inner line breaks made spaces).
        file: the notes file's name (``physics.md``).
        source: the file as the index shows it (``notes/physics.md``).
        heading: the heading path (``Physics > Waves``).
        chunk: id of the first chunk holding the sentence.
        order: position among all passages, for a stable reading order.
        example: the sentence belongs to a worked example (its numbers lean on the
            example's own sentences, so no blank is made in it).
    """

    text: str
    file: str
    source: str
    heading: str
    chunk: str
    order: int
    example: bool = False

    @property
    def section(self) -> str:
        """The innermost heading: ``Waves`` of ``Physics > Waves``."""
        return self.heading.split(" > ")[-1].strip()

    @property
    def subject(self) -> str:
        return Path(self.file).stem

    @property
    def worked_example(self) -> bool:
        return self.example or self.text.startswith("Worked example")


def sentences(text: str) -> list[tuple[str, bool]]:
    """The sentences of a chunk's text, heading lines left out, each with whether its
    paragraph is a worked example."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.splitlines() if not _HEADING_LINE.match(line)]
        flat = " ".join(" ".join(lines).split())
        example = flat.startswith("Worked example")
        found.extend((part.strip(), example) for part in _SENTENCE_END.split(flat) if part.strip())
    return found


def passages_of(chunks: Sequence) -> list[Passage]:
    """Every sentence of ``chunks`` (``tutorlm.rag.Chunk``), once, in reading order.

    The first and last sentence of a chunk may be cut by the chunk boundary; a piece
    that a longer sentence of the same section contains is dropped in its favour.
    """
    found: dict[tuple[str, str, str], Passage] = {}
    for chunk in chunks:
        for text, example in sentences(chunk.text):
            key = (chunk.source, chunk.heading, text)
            if key not in found and len(text.split()) >= MIN_WORDS:
                name = Path(chunk.source).name
                found[key] = Passage(
                    text, name, chunk.source, chunk.heading, chunk.id, len(found), example
                )
    by_section: dict[tuple[str, str], list[Passage]] = {}
    for passage in found.values():
        by_section.setdefault((passage.source, passage.heading), []).append(passage)
    whole = []
    for group in by_section.values():
        for passage in group:
            if not any(passage.text in other.text and passage is not other for other in group):
                whole.append(passage)
    return sorted(whole, key=lambda p: p.order)
