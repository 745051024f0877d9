"""Checks on the bundled course notes and the questions written from them.

The notes feed three stages: the RAG index chunks them, the data stage turns the
Q&A items into SFT rows, and the MCQA items are held-out eval questions. These
tests keep the three honest: every question points at a real section, every
multiple-choice answer is backed by a verbatim quote from that section, the
correct letter is not guessable from its position, and no eval question repeats
a 13-word run of a training item (the same n-gram the data stage decontaminates on).

The tutoring data and its grader read two more things (docs/tutoring.md): each
``qa`` item's ``canonical`` answer (with accepted ``variants``), which its own
answer text states, and ``unanswerable`` questions, whose true answers (``absent``)
the notes must not contain, or a reply that says "the notes do not cover it" would
be wrong.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

import tutorlm

ASSETS = Path(tutorlm.__file__).parent / "assets"
NOTES_DIR = ASSETS / "notes"
QUESTIONS_PATH = ASSETS / "notes_questions.jsonl"
SUBJECT_FILES = {
    "mathematics.md",
    "physics.md",
    "chemistry.md",
    "biology.md",
    "computer_science.md",
    "machine_learning.md",
}
QUESTION_KEYS = {"id", "kind", "file", "section", "question", "answer"}
QA_KEYS = QUESTION_KEYS | {"canonical", "variants"}
MCQA_KEYS = QUESTION_KEYS | {"choices", "evidence"}
UNANSWERABLE_KEYS = {"id", "kind", "subject", "question", "absent"}
MIN_QA_PER_SECTION = 3
MCQA_PER_SECTION = 5
MIN_ANSWERABLE = 150
MIN_UNANSWERABLE = 30
NGRAM = 13


def parse_notes(text: str) -> tuple[str, dict[str, str]]:
    """Split a notes file into its `# Title` and `## Section` bodies, in order.

    Raises ValueError when the title is missing or a heading repeats, because the
    question file refers to sections by heading text alone.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError("first line must be a '# Subject' title")
    title = lines[0][2:].strip()
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:]:
        if line.startswith("## "):
            heading = line[3:].strip()
            if heading in sections:
                raise ValueError(f"duplicate section heading {heading!r}")
            current = sections[heading] = []
        elif line.startswith("#"):
            raise ValueError(f"unexpected heading level: {line!r}")
        elif current is not None:
            current.append(line)
        elif line.strip():
            raise ValueError(f"text before the first section: {line!r}")
    return title, {heading: "\n".join(body).strip() for heading, body in sections.items()}


def slugify(heading: str) -> str:
    """Section slug used in question ids: lowercase words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Word n-grams of lowercased, whitespace-split text."""
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@pytest.fixture(scope="module")
def notes() -> dict[str, dict[str, str]]:
    return {
        path.name: parse_notes(path.read_text(encoding="utf-8"))[1]
        for path in NOTES_DIR.glob("*.md")
    }


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    parsed = []
    for line_no, line in enumerate(QUESTIONS_PATH.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{QUESTIONS_PATH.name}:{line_no}: blank line"
        parsed.append(json.loads(line))
    return parsed


def test_parse_notes_splits_title_and_sections():
    title, sections = parse_notes("# Demo\n\n## First\n\nOne two.\n\n## Second one\nThree.\n")
    assert title == "Demo"
    assert sections == {"First": "One two.", "Second one": "Three."}
    with pytest.raises(ValueError, match="duplicate"):
        parse_notes("# Demo\n## A\nx\n## A\ny\n")
    with pytest.raises(ValueError, match="title"):
        parse_notes("## A\nx\n")


def test_ngram_overlap_detects_a_shared_13_word_run():
    shared = "one two three four five six seven eight nine ten eleven twelve thirteen"
    assert ngrams(f"Intro {shared} end") & ngrams(f"{shared.upper()} tail")
    assert not ngrams(f"Intro {shared}") & ngrams(shared.replace("seven", "7"))


def test_every_subject_has_a_titled_file_with_six_to_eight_sections():
    assert {path.name for path in NOTES_DIR.glob("*.md")} == SUBJECT_FILES
    for path in sorted(NOTES_DIR.glob("*.md")):
        title, sections = parse_notes(path.read_text(encoding="utf-8"))
        assert title, path.name
        assert 6 <= len(sections) <= 8, (path.name, len(sections))
        for heading, body in sections.items():
            words = len(body.split())
            assert 120 <= words <= 250, f"{path.name} / {heading}: {words} words"


def test_notes_hold_at_least_36_sections(notes):
    assert sum(len(sections) for sections in notes.values()) >= 36


def normalized(text: str) -> str:
    """Lower case, one space between words: how a grader compares answer strings."""
    return " ".join(text.lower().split())


def answerable(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["kind"] != "unanswerable"]


def test_rows_have_the_documented_fields_and_ids(rows, notes):
    for row in answerable(rows):
        expected = QA_KEYS if row["kind"] == "qa" else MCQA_KEYS
        assert row["kind"] in {"qa", "mcqa"}, row["id"]
        assert set(row) == expected, row["id"]
        assert row["file"] in notes, row["id"]
        assert row["section"] in notes[row["file"]], row["id"]
        prefix = f"notes-{row['file'].removesuffix('.md')}-{slugify(row['section'])}-"
        suffix = "qa" if row["kind"] == "qa" else "mc"
        assert re.fullmatch(re.escape(prefix) + suffix + r"[1-9]", row["id"]), row["id"]
        assert row["question"].strip().endswith("?"), row["id"]


def test_ids_are_unique(rows):
    duplicates = [key for key, count in Counter(row["id"] for row in rows).items() if count > 1]
    assert duplicates == []


def test_every_section_has_qa_items_and_five_or_no_mcqa_items(rows, notes):
    """The sections written for the tutoring data have Q&A items only: new MCQA items
    would change the demo's MCQA test split."""
    counts = Counter((row["file"], row["section"], row["kind"]) for row in answerable(rows))
    for file_name, sections in notes.items():
        for heading in sections:
            assert counts[(file_name, heading, "qa")] >= MIN_QA_PER_SECTION, (file_name, heading)
            assert counts[(file_name, heading, "mcqa")] in (0, MCQA_PER_SECTION), heading
    assert sum(counts[key] for key in counts if key[2] == "qa") >= MIN_ANSWERABLE


def test_every_qa_item_states_its_canonical_answer(rows):
    for row in rows:
        if row["kind"] == "qa":
            canonical, variants = row["canonical"], row["variants"]
            assert canonical.strip() and len(canonical.split()) <= 8, row["id"]
            assert normalized(canonical) in normalized(row["answer"]), row["id"]
            assert isinstance(variants, list), row["id"]
            assert all(isinstance(v, str) and v.strip() for v in variants), row["id"]
            keys = [normalized(v) for v in [canonical, *variants]]
            assert len(set(keys)) == len(keys), row["id"]


def test_unanswerable_questions_are_not_answered_by_the_notes(rows, notes):
    """Each ``absent`` string (the true answer's figure, name or key term) occurs in no
    notes file, as a whole word: "46" must not match inside "146"."""
    text = "\n".join(body for sections in notes.values() for body in sections.values())
    questions = [row for row in rows if row["kind"] == "unanswerable"]
    assert len(questions) >= MIN_UNANSWERABLE
    subjects = {name.removesuffix(".md") for name in SUBJECT_FILES}
    assert Counter(row["subject"] for row in questions).keys() == subjects
    for row in questions:
        assert set(row) == UNANSWERABLE_KEYS, row["id"]
        assert re.fullmatch(rf"notes-unanswerable-{row['subject']}-[0-9]+", row["id"]), row["id"]
        assert row["question"].strip().endswith("?"), row["id"]
        assert row["absent"], row["id"]
        for fact in row["absent"]:
            pattern = rf"(?<![\w.]){re.escape(fact)}(?![\w])"
            assert not re.search(pattern, text, re.IGNORECASE), (row["id"], fact)


def test_qa_answers_are_one_to_four_sentences(rows):
    for row in rows:
        if row["kind"] == "qa":
            sentences = len(re.findall(r"[.!?](?:\s|$)", row["answer"]))
            assert 1 <= sentences <= 4, row["id"]


def test_mcqa_evidence_is_a_verbatim_quote_from_its_section(rows, notes):
    for row in rows:
        if row["kind"] == "mcqa":
            assert 5 <= len(row["evidence"].split()) <= 20, row["id"]
            assert row["evidence"] in notes[row["file"]][row["section"]], row["id"]


def test_mcqa_has_four_distinct_choices_and_an_answer_in_range(rows):
    for row in rows:
        if row["kind"] == "mcqa":
            choices = row["choices"]
            assert len(choices) == 4, row["id"]
            assert len({choice.strip() for choice in choices}) == 4, row["id"]
            assert all(choice.strip() for choice in choices), row["id"]
            assert type(row["answer"]) is int and 0 <= row["answer"] <= 3, row["id"]


def test_correct_positions_are_balanced_within_each_file(rows):
    by_file: dict[str, Counter] = {}
    for row in rows:
        if row["kind"] == "mcqa":
            by_file.setdefault(row["file"], Counter())[row["answer"]] += 1
    assert set(by_file) == SUBJECT_FILES
    for file_name, positions in by_file.items():
        total = sum(positions.values())
        for position in range(4):
            share = positions[position] / total
            assert 0.20 <= share <= 0.30, (file_name, position, share)


def test_no_mcqa_item_shares_a_13_gram_with_any_qa_item(rows):
    qa_grams: set[tuple[str, ...]] = set()
    for row in rows:
        if row["kind"] == "qa":
            qa_grams |= ngrams(f"{row['question']} {row['answer']}")
    leaks = {
        row["id"]: sorted(" ".join(gram) for gram in shared)
        for row in rows
        if row["kind"] == "mcqa"
        and (shared := ngrams(" ".join([row["question"], *row["choices"]])) & qa_grams)
    }
    assert leaks == {}
