"""``tutorlm quiz build``: questions from an index of the notes, checked, balanced, written.

1. the index's chunks become sentences (:mod:`tutorlm.quiz.passages`), those of the
   asked sections only;
2. a generator writes candidate questions (rule-based by default, or a model);
3. every candidate passes the checks (:mod:`tutorlm.quiz.checks`) or is dropped, the
   reason counted;
4. the answers of text choices are put at letters in a seeded balanced order (number
   choices stay in ascending order, their rank balanced by the writer);
5. at most ``count`` are kept, taken in turn from each section so that every section
   is asked about; ids are given; the quiz and its manifest are written.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tutorlm.data.formats import atomic_write_text
from tutorlm.errors import TutorlmError
from tutorlm.evaluate.tutor_graders import answer_number
from tutorlm.quiz.checks import Notes, balance, check_questions
from tutorlm.quiz.passages import Passage, passages_of
from tutorlm.quiz.records import Question, write_quiz


class Generator(Protocol):
    """What writes candidate questions: the rule-based writer, or a model."""

    name: str

    def generate(self, passages: Sequence[Passage]) -> list[Question]: ...


class QuizBuildError(TutorlmError, ValueError):
    """A build with nothing to ask: no section matched, or no question survived."""


def manifest_path(quiz_path: str | Path) -> Path:
    """``quiz.jsonl`` -> ``quiz.manifest.json``, next to it."""
    quiz_path = Path(quiz_path)
    return quiz_path.with_name(f"{quiz_path.stem}.manifest.json")


def select_sections(passages: Sequence[Passage], sections: Sequence[str]) -> list[Passage]:
    """The passages of the sections named: a name matches a section title, a heading
    path or a file stem (case ignored, ``physics`` takes all of physics.md)."""
    if not sections:
        return list(passages)
    wanted = [name.strip().lower() for name in sections if name.strip()]

    def matches(passage: Passage) -> bool:
        names = {passage.section.lower(), passage.heading.lower(), passage.subject.lower()}
        return any(name in names or name in passage.heading.lower() for name in wanted)

    chosen = [p for p in passages if matches(p)]
    if not chosen:
        known = sorted({p.section for p in passages})
        raise QuizBuildError(f"no section matches {list(sections)}; the notes have {known}")
    return chosen


def place_answers(questions: Sequence[Question], seed: int) -> None:
    """Put each text-choice answer at the next letter of a seeded balanced order.

    Number choices are left ascending (a student reads numbers in order); the writer
    already spread their answers over the ranks, so over the quiz both stay balanced.
    """
    rng = random.Random(f"{seed}:letters")
    block: list[int] = []
    for question in questions:
        if all(answer_number(choice) for choice in question.choices):
            continue
        if not block:
            block = list(range(len(question.choices)))
            rng.shuffle(block)
        target = block.pop()
        right = question.choices[question.answer]
        others = [c for i, c in enumerate(question.choices) if i != question.answer]
        question.choices = [*others[:target], right, *others[target:]]
        question.answer = target


def spread_over_sections(questions: Sequence[Question], count: int | None) -> list[Question]:
    """At most ``count`` questions, taken one per section in turn (notes order)."""
    if count is None or count >= len(questions):
        return list(questions)
    by_section: dict[tuple[str, str], list[Question]] = defaultdict(list)
    for question in questions:
        by_section[(question.file, question.heading)].append(question)
    chosen: list[Question] = []
    queues = list(by_section.values())
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    order = {id(q): n for n, q in enumerate(questions)}
    return sorted(chosen, key=lambda q: order[id(q)])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def give_ids(questions: Sequence[Question]) -> None:
    """``<file stem>-<section slug>-<n>``, n counting within the section from 1."""
    counts: Counter = Counter()
    for question in questions:
        key = f"{_slug(question.subject)}-{_slug(question.section)}"
        counts[key] += 1
        question.id = f"{key}-{counts[key]}"


def build_quiz(
    index_dir: str | Path,
    out: str | Path,
    *,
    generator: Generator | None = None,
    sections: Sequence[str] = (),
    count: int | None = None,
    seed: int = 0,
    k: int = 3,
    mode: str = "hybrid",
    embedder=None,
    log=print,
) -> dict:
    """Build a quiz from an index of the notes; returns the manifest (also written).

    Args:
        index_dir: an index written by ``tutorlm index build``.
        out: the quiz file (``.jsonl``); the manifest goes next to it.
        generator: the question writer (default: the rule-based one with ``seed``).
        sections: section titles, heading paths or file stems to ask about (default all).
        count: most questions to keep, spread over the sections (default all).
        seed: fixes the rule-based writer and the answer letters.
        k, mode: the answerability check: the passage must rank in the top ``k`` of a
            ``mode`` search for the stem.
        embedder: the index's embedding model, ready (tests pass a tiny one).
        log: called with one line at a time.
    """
    from tutorlm.quiz.rules import RuleGenerator
    from tutorlm.rag.retrieve import load_index

    started = time.perf_counter()
    generator = generator or RuleGenerator(seed)
    index = load_index(index_dir, embedder=embedder)
    passages = select_sections(passages_of(index.chunks), sections)
    candidates = generator.generate(passages)
    report = check_questions(candidates, Notes.of_index(index, mode=mode, k=k))
    if not report.kept:
        raise QuizBuildError(f"no question passed the checks (dropped: {report.reasons})")
    place_answers(report.kept, seed)
    chosen = spread_over_sections(report.kept, count)
    give_ids(chosen)
    write_quiz(out, chosen)
    manifest = {
        "quiz": str(out),
        "index": str(index_dir),
        "generator": generator.name,
        "seed": seed,
        "search": {"mode": mode, "k": k},
        "sections_asked": list(sections),
        "candidates": len(candidates),
        "passed": len(report.kept),
        "pass_rate": round(len(report.kept) / max(len(candidates), 1), 4),
        "dropped": report.reasons,
        "unparsed": dict(getattr(generator, "unparsed", {}) or {}),
        "written": len(chosen),
        "sections": len({(q.file, q.heading) for q in chosen}),
        "kinds": dict(Counter(q.kind for q in chosen)),
        "by_generator": dict(Counter(q.generator for q in chosen)),
        "per_section": dict(Counter(f"{q.file} > {q.section}" for q in chosen)),
        "balance": balance(chosen),
        "drops": [
            {"question": q.question, "answer": q.answer_text, "reason": reason, "detail": detail}
            for q, reason, detail in report.dropped
        ],
        "seconds": round(time.perf_counter() - started, 2),
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(manifest_path(out), text)
    log(
        f"{out}: {len(chosen)} questions from {manifest['sections']} sections "
        f"({manifest['kinds']}); {len(report.kept)}/{len(candidates)} candidates passed "
        f"every check ({100 * manifest['pass_rate']:.1f} %), dropped {report.reasons or 'none'}"
    )
    return manifest
