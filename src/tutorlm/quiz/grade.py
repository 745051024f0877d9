"""Grading a student's reply to a question, with the tutor tasks' graders.

The rules are those of :mod:`tutorlm.evaluate.tutor_graders` (normalised text match,
numbers within its relative tolerance, accepted variants), so a quiz and the tutor
evaluation agree on what counts as the answer. Two rules are the quiz's own:

- a multiple-choice question may be answered by its letter ("B", "(b)", "answer: B");
- a reply that names the answer and also a wrong choice ("velocity or momentum") is
  wrong: listing the choices is not knowing which one is right.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tutorlm.evaluate.tutor_graders import bare_letter, find_answer
from tutorlm.quiz.records import LETTERS, Question


@dataclass(frozen=True)
class Graded:
    """One answered question: the reply, the verdict and why."""

    question: Question
    reply: str
    correct: bool
    why: str

    def to_dict(self) -> dict:
        q = self.question
        return {
            "id": q.id,
            "correct": self.correct,
            "why": self.why,
            "answer": q.answer_text,
            "letter": q.letter,
            "explanation": q.explanation,
            "source": {"file": q.file, "section": q.section, "heading": q.heading},
            "passage": q.passage,
        }


def _letter(reply: str, question: Question) -> int | None:
    text = reply.strip()
    if re.fullmatch(r"[A-Ja-j]", text):
        return LETTERS.index(text.upper())
    said, _ = bare_letter(text)
    if said:
        found = re.search(r"[A-J](?=[)\].:]?\s*$)", text.upper())
        return LETTERS.index(found[0]) if found else None
    return None


def grade(question: Question, reply: str) -> Graded:
    """The verdict on ``reply`` to ``question``."""
    if not reply.strip():
        return Graded(question, reply, False, "no answer given")
    if question.kind == "mcqa":
        letter = _letter(reply, question)
        if letter is not None and letter < len(question.choices):
            right = letter == question.answer
            why = f"chose {LETTERS[letter]}, the answer is {question.letter}"
            return Graded(question, reply, right, why)
    found = find_answer(reply, [question.answer_text, *question.variants])
    if found is None:
        return Graded(question, reply, False, f"the answer is {question.answer_text!r}")
    wrong = [c for i, c in enumerate(question.choices) if i != question.answer]
    also = [c for c in wrong if find_answer(reply, [c]) and not find_answer(c, [found[0]])]
    if also:
        return Graded(question, reply, False, f"names {found[0]!r} but also {also[0]!r}")
    return Graded(question, reply, True, f"matches {found[0]!r} ({found[1]})")


@dataclass(frozen=True)
class Summary:
    """A finished quiz: the score and the sections to read again (notes order)."""

    score: int
    total: int
    reread: list[tuple[str, str]]
    """``(file, heading)`` of each section with a wrong answer, once each."""

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "total": self.total,
            "reread": [{"file": f, "heading": h} for f, h in self.reread],
        }


def summarize(graded: Sequence[Graded]) -> Summary:
    reread: list[tuple[str, str]] = []
    for item in graded:
        where = (item.question.file, item.question.heading)
        if not item.correct and where not in reread:
            reread.append(where)
    return Summary(sum(item.correct for item in graded), len(graded), reread)
