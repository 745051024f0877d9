"""Exact deduplication, and n-gram decontamination against the eval sets.

Decontamination follows GPT-3 and lm-evaluation-harness: texts become lower-case
words (punctuation ignored) and a training row is dropped when it shares any
13-word sequence with a row of an eval set. An eval text shorter than 13 words
has no 13-gram, so it is matched whole instead: a training row containing all its
words in order is dropped too (short procedural questions such as "Find the LCM
of 76 and 70" would otherwise slip through). Eval texts under ``min_words`` words
are ignored, as they match by chance.

One refinement keeps templates from counting as contamination: an n-gram found
in more than ``template_groups`` items (eval and training rows together; the pairs
of one CHAMP problem are one item) is the fixed wording of a generator or of a
solution writer ("Write the factors separated by x (Example: for 12 the answer
would be...") rather than an item, so it is ignored. Item-specific n-grams (with
the item's own numbers and words) still match.

Which texts are compared: the question of an MCQA record (not its options, which
are short and shared by design), the user turns and replies of SFT records, and
the prompt, chosen and rejected replies of preference pairs; of an eval pair only
the prompt and the chosen reply are indexed, since a rejected reply is often a
corrupted copy carrying filler text (the inserted irrelevant sentences).

Before any n-gram is compared, a stricter rule holds: a test question found
verbatim (whitespace and case aside) in a training row's question is a leak, and
the row goes, whatever the template rule says (:class:`HeldOutQuestions`). The
template rule alone cannot see it: a generator that draws the same number four
times makes an item's own wording ("... factorization of 120 ...") look shared by
four items, that is, like a template.
"""

from __future__ import annotations

import json
from pathlib import Path

from tutorlm.data.formats import MCQARecord, PreferenceRecord, SFTRecord
from tutorlm.data.rules.text import normalize, words


def record_texts(record, *, eval_side: bool = False) -> list[str]:
    """The texts of a record that decontamination compares (fewer on the eval side)."""
    if isinstance(record, MCQARecord):
        return [record.question]
    if isinstance(record, SFTRecord):
        return [m.content for m in record.messages if m.role != "system"]
    if isinstance(record, PreferenceRecord):
        turns = [*record.prompt, *record.chosen]
        if not eval_side:
            turns += record.rejected
        return [m.content for m in turns if m.role != "system"]
    raise TypeError(f"not a record: {type(record).__name__}")


def question_texts(record) -> list[str]:
    """The questions a record asks: an MCQA record's question, the user turns of an
    SFT record, the user turns of a pair's prompt."""
    if isinstance(record, MCQARecord):
        return [record.question]
    if isinstance(record, SFTRecord):
        return [m.content for m in record.messages if m.role == "user"]
    if isinstance(record, PreferenceRecord):
        return [m.content for m in record.prompt if m.role == "user"]
    raise TypeError(f"not a record: {type(record).__name__}")


def raw_texts(row: dict) -> list[str]:
    """Texts of a raw JSON row of any of our record kinds (extra eval files)."""
    if "question" in row:
        return [str(row["question"])]
    texts = []
    for key in ("messages", "prompt", "chosen"):
        value = row.get(key)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts += [str(m.get("content", "")) for m in value if m.get("role") != "system"]
    return texts


def raw_questions(row: dict) -> list[str]:
    """The questions of a raw JSON row of any of our record kinds (extra eval files)."""
    if "question" in row:
        return [str(row["question"])]
    for key in ("messages", "prompt"):
        value = row.get(key)
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [str(m.get("content", "")) for m in value if m.get("role") == "user"]
    return []


def dedup_key(record) -> str:
    """What makes two records the same: their normalized content, system turn aside."""
    if isinstance(record, MCQARecord):
        return (
            "mcqa\0"
            + normalize(record.question)
            + "\0"
            + "\0".join(sorted(normalize(c) for c in record.choices))
        )
    return "\0".join(normalize(t) for t in record_texts(record))


class EvalIndex:
    """The n-grams (and short texts) of every eval set, to test training rows against.

    Usage: ``add_record`` every eval row, ``note_training`` every training row (to
    tell template wording from items), then ``match`` each training row.
    """

    def __init__(self, n: int = 13, min_words: int = 4, template_groups: int = 3):
        self.n = n
        self.min_words = min_words
        self.template_groups = template_groups
        self.grams: dict[tuple[str, ...], str] = {}
        self.groups_with: dict[tuple[str, ...], set[str]] = {}
        self.short: dict[int, dict[tuple[str, ...], str]] = {}

    def _grams(self, texts: list[str]) -> set[tuple[str, ...]]:
        out: set[tuple[str, ...]] = set()
        for text in texts:
            tokens = words(text)
            out.update(tuple(tokens[i : i + self.n]) for i in range(len(tokens) - self.n + 1))
        return out

    def add_row(self, texts: list[str], origin: str, group: str) -> None:
        """Index the texts of one eval row (``group``: the item it belongs to)."""
        for text in texts:
            tokens = words(text)
            if self.min_words <= len(tokens) < self.n:
                self.short.setdefault(len(tokens), {}).setdefault(tuple(tokens), origin)
        for gram in self._grams(texts):
            self.grams.setdefault(gram, origin)
            self.groups_with.setdefault(gram, set()).add(group)

    def add_record(self, record, origin: str, group: str) -> None:
        self.add_row(record_texts(record, eval_side=True), origin, group)

    def add_file(self, path: Path | str) -> int:
        """Index every row of a JSONL file of records; returns the number of rows."""
        rows = 0
        with Path(path).open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    self.add_row(raw_texts(json.loads(line)), Path(path).name, f"{path}:{number}")
                    rows += 1
        return rows

    def note_training(self, record, group: str) -> None:
        """Count a training row's item against the eval n-grams it contains."""
        for gram in self._grams(record_texts(record)):
            if gram in self.groups_with:
                self.groups_with[gram].add(group)

    def is_template(self, gram: tuple[str, ...]) -> bool:
        """Wording shared by more items than ``template_groups`` (eval and training
        together) is a template, not an item."""
        return len(self.groups_with[gram]) > self.template_groups

    def match(self, record) -> str | None:
        """The eval set a record overlaps with, or None if it is clean."""
        for text in record_texts(record):
            tokens = words(text)
            for i in range(len(tokens) - self.n + 1):
                gram = tuple(tokens[i : i + self.n])
                hit = self.grams.get(gram)
                if hit and not self.is_template(gram):
                    return hit
            for length, texts in self.short.items():
                for i in range(len(tokens) - length + 1):
                    hit = texts.get(tuple(tokens[i : i + length]))
                    if hit:
                        return hit
        return None


class HeldOutQuestions:
    """The questions of every eval set, to find verbatim in training rows.

    Texts are compared as :func:`normalize` writes them (whitespace collapsed, lower
    case). A training question that *contains* a test question, on whitespace
    boundaries, leaks it too: the MCQA item "Find the LCM of 76 and 70." asked again
    with lettered options is the same item. Test questions under ``min_words``
    words only match a training question equal to them, since a short question
    ("Why?") inside a longer text is there by chance.

    Usage: ``add_record`` every eval row (``add_file`` for extra eval files), then
    ``match`` each training row.
    """

    def __init__(self, min_words: int = 4):
        self.min_words = min_words
        self.whole: dict[str, str] = {}
        self.by_head: dict[tuple[str, ...], list[tuple[tuple[str, ...], str]]] = {}

    def add(self, text: str, origin: str) -> None:
        """Index one test question (``origin``: the eval file it comes from)."""
        tokens = tuple(normalize(text).split())
        if not tokens:
            return
        self.whole.setdefault(" ".join(tokens), origin)
        if len(tokens) >= self.min_words:
            self.by_head.setdefault(tokens[: self.min_words], []).append((tokens, origin))

    def add_record(self, record, origin: str) -> None:
        for text in question_texts(record):
            self.add(text, origin)

    def add_file(self, path: Path | str) -> None:
        """Index the questions of every row of a JSONL file of records."""
        with Path(path).open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    for text in raw_questions(json.loads(line)):
                        self.add(text, Path(path).name)

    def match(self, record) -> str | None:
        """The eval file whose question a record asks verbatim, or None."""
        for text in question_texts(record):
            normal = normalize(text)
            if normal in self.whole:
                return self.whole[normal]
            tokens = tuple(normal.split())
            for i in range(len(tokens) - self.min_words + 1):
                for question, origin in self.by_head.get(tokens[i : i + self.min_words], ()):
                    if tokens[i : i + len(question)] == question:
                        return origin
        return None
