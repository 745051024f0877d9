"""One quiz question, and the quiz file: an MCQA record per line with the quiz in ``meta``.

Every question carries four choices and an answer index, whatever its kind, so a
quiz is an MCQA eval set as written (``read_records(path, "mcqa")``). What only a
quiz needs (the kind, the answer as text and its accepted variants, the passage it
comes from, the explanation) lives in ``meta``; the record format forbids other
top-level fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tutorlm.data.formats import MCQARecord, atomic_write_text, read_records
from tutorlm.errors import TutorlmError

KINDS = ("mcqa", "short", "numeric")
"""How a question is asked: pick a choice, type a word or phrase, type a number."""
LETTERS = "ABCDEFGHIJ"


class QuizFileError(TutorlmError, ValueError):
    """A quiz file line that is not a quiz question, named by file, line and field."""


@dataclass
class Question:
    """A practice question drawn from one passage of the notes.

    Attributes:
        id: stable id, ``<file stem>-<section slug>-<n>``.
        kind: one of :data:`KINDS`.
        question: the stem, as the student reads it.
        choices: four choices (every kind has them: they make the quiz an MCQA set).
        answer: index of the right choice.
        answer_text: the right answer as text (a number for ``numeric``).
        variants: other spellings that count as right (abbreviation, singular ...).
        file: the notes file name, e.g. ``physics.md``.
        section: the section title, e.g. ``Newton's laws``.
        heading: the heading path, e.g. ``Physics > Newton's laws``.
        passage: the sentence of the notes the question is drawn from, verbatim.
        chunk: id of the index chunk holding the passage.
        explanation: why the answer is right, citing the passage.
        generator: which rule (or model) wrote it, e.g. ``rules:definition``.
        formula: for ``numeric``, the formula as the notes write it.
        values: for ``numeric``, the values put into the formula.
    """

    id: str
    kind: str
    question: str
    choices: list[str]
    answer: int
    answer_text: str
    file: str
    section: str
    heading: str
    passage: str
    chunk: str
    explanation: str
    generator: str
    variants: list[str] = field(default_factory=list)
    formula: str | None = None
    values: dict[str, float] = field(default_factory=dict)

    @property
    def letter(self) -> str:
        return LETTERS[self.answer]

    @property
    def subject(self) -> str:
        return Path(self.file).stem

    def to_record(self) -> dict:
        """The MCQA record this question is written as."""
        meta = {k: v for k, v in asdict(self).items() if k not in _RECORD_FIELDS}
        if self.formula is None:
            meta.pop("formula")
            meta.pop("values")
        return {
            "id": self.id,
            "source": f"quiz:{self.generator}",
            "question": self.question,
            "choices": self.choices,
            "answer": self.answer,
            "subject": self.subject,
            "meta": meta,
        }

    @classmethod
    def from_record(cls, record: MCQARecord) -> Question:
        meta = dict(record.meta)
        missing = [name for name in _META_REQUIRED if name not in meta]
        if missing:
            raise ValueError(f"meta lacks {', '.join(missing)}")
        if meta["kind"] not in KINDS:
            raise ValueError(f"meta.kind must be one of {KINDS}, got {meta['kind']!r}")
        fields = {name: meta[name] for name in cls.__dataclass_fields__ if name in meta}
        return cls(
            **fields,
            id=record.id,
            question=record.question,
            choices=list(record.choices),
            answer=record.answer,
        )


_RECORD_FIELDS = ("id", "question", "choices", "answer")
_META_REQUIRED = (
    "kind",
    "answer_text",
    "file",
    "section",
    "heading",
    "passage",
    "chunk",
    "explanation",
    "generator",
)


def read_quiz(path: str | Path) -> list[Question]:
    """The questions of a quiz file.

    Raises:
        QuizFileError: a line that is not an MCQA record with the quiz's ``meta``.
    """
    path = Path(path)
    if not path.is_file():
        raise QuizFileError(f"{path}: no such quiz file (write one with `tutorlm quiz build`)")
    result = read_records(path, "mcqa", strict=True)
    questions = []
    for number, record in enumerate(result.records, start=1):
        try:
            questions.append(Question.from_record(record))
        except (TypeError, ValueError) as error:
            raise QuizFileError(f"{path}: question {number} ({record.id}): {error}") from None
    return questions


def write_quiz(path: str | Path, questions: list[Question]) -> Path:
    """Write the questions, one MCQA record a line, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(q.to_record(), ensure_ascii=False) + "\n" for q in questions)
    atomic_write_text(path, lines)
    return path
