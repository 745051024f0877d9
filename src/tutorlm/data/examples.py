"""What sources yield before rules turn rows into records, and the per-source tally.

Every source converts its raw rows into :class:`Example` objects of one *shape*
(question/answer, conversation, chosen/rejected pair, multiple choice, answers
ranked by votes, or an annotated A/B pair). The rules of the section then turn
examples into records of the section's kind. Keeping this one intermediate form
means a hub preset, a local file and a bundled package all meet the same rules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tutorlm.errors import TutorlmError

SHAPES = ("qa", "messages", "pair", "mc", "ranked", "annotated")


class DataError(TutorlmError, ValueError):
    """A data build problem the user can fix; the message names the source and rule."""


class Skip(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a converter to drop one row; ``rule`` is what the manifest counts."""

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


@dataclass
class Example:
    """One row of a source, in a shape the rules understand.

    Only the fields of the example's ``shape`` are set:

    - ``qa``: question, answer, and ``final`` (the short final result) when known.
    - ``messages``: messages (a whole conversation).
    - ``pair``: question (the prompt), chosen, rejected.
    - ``mc``: question, choices, label (index of the right choice), subject.
    - ``ranked``: question, answers as ``(text, score)``.
    - ``annotated``: question, ``a``/``b`` answers and ``grades`` (overall,
      correctness...), ``options`` when the question is multiple-choice.

    ``uid`` is unique within the source; ``group`` keeps related rows (one CHAMP
    problem, one Stack Exchange question) in the same split.
    """

    shape: str
    uid: str
    group: str = ""
    question: str = ""
    answer: str = ""
    final: str | None = None
    system: str | None = None
    messages: list[dict] | None = None
    chosen: str = ""
    rejected: str = ""
    choices: list[str] | None = None
    label: int | None = None
    subject: str | None = None
    answers: list[tuple[str, float]] | None = None
    a: str = ""
    b: str = ""
    grades: dict[str, str] = field(default_factory=dict)
    options: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if not self.group:
            self.group = self.uid


@dataclass
class Row:
    """A finished record on its way to a file, with what the split needs to know."""

    record: Any
    group: str
    source: str


@dataclass
class SourceStats:
    """Rows read from a source, rows kept, and rows dropped by each rule."""

    section: str
    type: str
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0

    def drop(self, rule: str, n: int = 1) -> None:
        if n:
            self.dropped[rule] += n

    def to_dict(self) -> dict:
        return {
            "section": self.section,
            "type": self.type,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "truncated": self.truncated,
        }


def require_rows(rows: list, rule: str, source: str, before: int) -> list:
    """Raise when a rule left nothing, naming the rule: an empty output is never silent."""
    if before and not rows:
        raise DataError(f"source '{source}': rule '{rule}' left 0 of {before} rows")
    return rows


def json_lines(path) -> list[tuple[int, dict]]:
    """``(line number, object)`` of each non-empty line of a JSON Lines file.

    Raises:
        DataError: naming the file and line of a line that is not valid JSON.
    """
    import json
    from pathlib import Path

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return rows
