"""The quality checks every question passes before a student sees it.

Each check names the reason a question is dropped; the builder counts the reasons
in its manifest, as ``data build`` counts bad rows. In the order they run (cheap
first, retrieval last):

- ``malformed``: an unknown kind, fewer than two choices, the answer index out of
  range, or the right choice is not the answer text;
- ``duplicate_choices``: two choices the same after normalisation;
- ``ambiguous``: the stem, less its label, has fewer than :data:`MIN_CONTENT_WORDS`
  content words, opens on a pronoun that leans on an unseen sentence ("It ..."), or
  has more than one blank;
- ``answer_in_stem``: the answer (or a variant) is in the stem;
- ``second_right_answer``: a distractor matches the answer (text or number within the
  graders' tolerance), one contains the other, or the question's own passage states
  a distractor (a cloze it fits as well);
- ``passage_not_in_notes``: the passage is not text of the indexed notes;
- ``answer_not_in_passage``: the passage does not hold the answer (numeric problems:
  the formula is not in the passage, or does not give the answer for the values);
- ``duplicate``: the same stem, or the same passage and answer, as a kept question;
- ``not_answerable``: retrieval for the stem does not rank a chunk holding the
  passage in the top ``k`` (3): a student (or the tutor) searching the notes with the
  question would not find where the answer is.

Answer letters and answer ranks (by length, or by value for numbers) are properties
of the whole quiz: :func:`balance` measures them for the manifest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tutorlm.evaluate.tutor_graders import answer_number, find_answer, normalize, same_number
from tutorlm.quiz.formulas import parse_formula, plain_symbol
from tutorlm.quiz.records import KINDS, LETTERS, Question
from tutorlm.quiz.text import BLANK

REASONS = (
    "malformed",
    "duplicate_choices",
    "ambiguous",
    "answer_in_stem",
    "second_right_answer",
    "passage_not_in_notes",
    "answer_not_in_passage",
    "duplicate",
    "not_answerable",
)
MIN_CONTENT_WORDS = 3
_LABEL = re.compile(r"^\s*(?:Fill in the blank\s*)?\([^()]*\)\s*:?\s*")
_LEANING = re.compile(r"^(?:It|Its|They|Their|This|These|That|Those|Such|He|She)\b")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "and",
        "or",
        "but",
        "not",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "which",
        "what",
        "who",
        "whom",
        "how",
        "why",
        "when",
        "where",
        "there",
        "their",
        "they",
        "he",
        "she",
        "we",
        "you",
        "i",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "can",
        "could",
        "will",
        "would",
        "should",
        "may",
        "might",
        "than",
        "then",
        "so",
        "such",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "above",
        "below",
        "between",
    ]
)


@dataclass
class Notes:
    """What the checks look a question up in: the index's chunks and its search.

    Attributes:
        chunk_texts: every chunk's text, whitespace collapsed.
        search: the chunk texts retrieval ranks first for a query (``k`` of them).
        k: how deep the passage may rank and still count as found.
    """

    chunk_texts: list[str]
    search: Callable[[str, int], list[str]]
    k: int = 3

    @classmethod
    def of_index(cls, index, *, mode: str = "hybrid", k: int = 3) -> Notes:
        """The notes of a loaded ``tutorlm.rag`` index, searched in ``mode``."""

        def search(query: str, depth: int) -> list[str]:
            return [_flat(hit.chunk.text) for hit in index.search(query, k=depth, mode=mode)]

        return cls([_flat(chunk.text) for chunk in index.chunks], search, k)


@dataclass
class CheckReport:
    """What the checks kept, and why each other question was dropped."""

    kept: list[Question] = field(default_factory=list)
    dropped: list[tuple[Question, str, str]] = field(default_factory=list)
    """``(question, reason, detail)``."""

    @property
    def reasons(self) -> dict[str, int]:
        counts = Counter(reason for _, reason, _ in self.dropped)
        return {reason: counts[reason] for reason in REASONS if counts[reason]}


def _flat(text: str) -> str:
    return " ".join(text.split())


def stem_body(question: str) -> str:
    """The stem without its "Fill in the blank (Subject, Section):" label."""
    return _LABEL.sub("", question, count=1)


def _accepted(question: Question) -> list[str]:
    return [question.answer_text, *question.variants]


def _structure(question: Question) -> tuple[str, str] | None:
    if question.kind not in KINDS:
        return "malformed", f"kind {question.kind!r} is not one of {KINDS}"
    if not 2 <= len(question.choices) <= len(LETTERS):
        return "malformed", f"{len(question.choices)} choices"
    if not 0 <= question.answer < len(question.choices):
        return "malformed", f"answer {question.answer} is out of range"
    if not question.answer_text.strip() or not question.question.strip():
        return "malformed", "empty answer or stem"
    right = question.choices[question.answer]
    if normalize(right) != normalize(question.answer_text) and not find_answer(
        right, [question.answer_text]
    ):
        return "malformed", f"choice {question.letter} {right!r} is not {question.answer_text!r}"
    normalised = [normalize(choice) for choice in question.choices]
    if len(set(normalised)) < len(normalised):
        return "duplicate_choices", "two choices are the same"
    return None


def _ambiguity(question: Question) -> tuple[str, str] | None:
    body = stem_body(question.question)
    words = [w for w in re.findall(r"[A-Za-z]+", body.replace(BLANK, " ")) if len(w) > 1]
    content = [w for w in words if w.lower() not in _STOPWORDS]
    if len(content) < MIN_CONTENT_WORDS:
        return "ambiguous", f"{len(content)} content words; a question needs {MIN_CONTENT_WORDS}"
    if _LEANING.match(body):
        return "ambiguous", f"opens with {body.split()[0]!r}, which refers to an unseen sentence"
    if body.count(BLANK) > 1:
        return "ambiguous", f"{body.count(BLANK)} blanks"
    return None


def _leak(question: Question) -> tuple[str, str] | None:
    found = find_answer(question.question.replace(BLANK, " "), _accepted(question))
    if found is not None:
        return "answer_in_stem", f"the stem contains {found[0]!r}"
    return None


def _one_right_answer(question: Question) -> tuple[str, str] | None:
    accepted = _accepted(question)
    passage = normalize(question.passage)
    for number, choice in enumerate(question.choices):
        if number == question.answer:
            continue
        if find_answer(choice, accepted) or any(find_answer(a, [choice]) for a in accepted):
            return "second_right_answer", f"choice {LETTERS[number]} {choice!r} matches the answer"
        if answer_number(choice) is None and re.search(
            rf"(?<!\w){re.escape(normalize(choice))}(?!\w)", passage
        ):
            return "second_right_answer", f"the passage also states choice {LETTERS[number]}"
    return None


def _grounding(question: Question, notes: Notes) -> tuple[str, str] | None:
    passage = _flat(question.passage)
    if not passage or not any(passage in text for text in notes.chunk_texts):
        return "passage_not_in_notes", "the passage is not in the indexed notes"
    if question.formula is not None:
        if question.formula not in question.passage:
            return "answer_not_in_passage", f"the formula {question.formula!r} is not in it"
        formula = parse_formula(question.formula)
        target = answer_number(question.answer_text)
        if formula is None or target is None:
            return "answer_not_in_passage", "the formula or the answer cannot be read"
        symbols = {s: question.values.get(plain_symbol(s)) for s in formula.symbols}
        if None in symbols.values():
            return "answer_not_in_passage", "a symbol of the formula has no value"
        value = formula.evaluate(symbols)
        computed = answer_number(f"{value:.6g}")
        if computed is None or not same_number(computed, target):
            return "answer_not_in_passage", f"the formula gives {value:.4g}, not {target.text}"
        return None
    if find_answer(question.passage, _accepted(question)) is None:
        return "answer_not_in_passage", "the passage does not state the answer"
    return None


def _answerable(question: Question, notes: Notes) -> tuple[str, str] | None:
    passage = _flat(question.passage)
    found = notes.search(question.question.replace(BLANK, " "), notes.k)
    if not any(passage in text for text in found):
        return "not_answerable", f"retrieval does not rank its passage in the top {notes.k}"
    return None


def check_questions(questions: Sequence[Question], notes: Notes) -> CheckReport:
    """Run every check on every question, in order; the first failure drops it."""
    report = CheckReport()
    stems: set[str] = set()
    facts: set[tuple[str, str]] = set()
    for question in questions:
        problem = (
            _structure(question)
            or _ambiguity(question)
            or _leak(question)
            or _one_right_answer(question)
            or _grounding(question, notes)
        )
        stem = normalize(stem_body(question.question))
        fact = (normalize(question.passage), normalize(question.answer_text))
        if problem is None and (stem in stems or fact in facts):
            problem = "duplicate", "another question has the same stem or the same fact"
        problem = problem or _answerable(question, notes)
        if problem is None:
            stems.add(stem)
            facts.add(fact)
            report.kept.append(question)
        else:
            report.dropped.append((question, *problem))
    return report


def answer_rank(question: Question) -> int:
    """The answer's rank among the choices: by value where every choice is a number,
    else by length (how many choices are shorter)."""
    numbers = [answer_number(choice) for choice in question.choices]
    if all(numbers):
        keys = [number.values[0] for number in numbers]
    else:
        keys = [len(choice) for choice in question.choices]
    return sum(key < keys[question.answer] for key in keys)


def balance(questions: Sequence[Question], tolerance: float = 0.08) -> dict:
    """How the answers spread over letters and ranks.

    Balanced when, for four-choice questions, every letter and every rank holds its
    share of the answers within ``tolerance`` of 1/4: a student (or a model) who always
    picks "C", or the longest choice, scores a quarter and no more.
    """
    four = [q for q in questions if len(q.choices) == 4]
    letters = Counter(q.letter for q in four)
    ranks = Counter(answer_rank(q) for q in four)
    n = max(len(four), 1)

    def spread(counts: Counter, keys) -> dict:
        return {str(key): counts.get(key, 0) for key in keys}

    shares = [letters.get(c, 0) / n for c in "ABCD"] + [ranks.get(r, 0) / n for r in range(4)]
    return {
        "questions": len(four),
        "letters": spread(letters, "ABCD"),
        "answer_ranks": spread(ranks, range(4)),
        "balanced": bool(four) and all(abs(s - 0.25) <= tolerance for s in shares),
        "tolerance": tolerance,
    }
