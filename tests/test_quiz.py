"""The quiz unit: formulas, the rule-based writer on the bundled notes (the issue's
targets), the checks against hand-written bad questions, grading, the terminal quiz,
the SQLite results, the model-based writer and the quiz as an MCQA eval set.

The notes are indexed with hand-made keyword vectors and the answerability check
searches BM25, so no embedding model is loaded; `docs/quiz.md` has the figures of the
real build (MiniLM, hybrid search).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rag_support import KeywordEmbedder

from tutorlm.data.formats import read_records
from tutorlm.quiz.build import build_quiz, manifest_path
from tutorlm.quiz.checks import Notes, answer_rank, check_questions
from tutorlm.quiz.formulas import formulas_in, parse_formula
from tutorlm.quiz.grade import grade, summarize
from tutorlm.quiz.model_gen import ModelGenerator, parse_reply
from tutorlm.quiz.records import read_quiz
from tutorlm.quiz.store import attempts, missed_sections, save_attempt
from tutorlm.quiz.take import take_quiz

BAD = Path(__file__).parent / "fixtures" / "quiz_bad_questions.jsonl"


@pytest.fixture(scope="module")
def notes_index(tmp_path_factory):
    from tutorlm.rag import build_index, load_index
    from tutorlm.rag.config import IndexSettings

    folder = tmp_path_factory.mktemp("quiz-index")
    build_index(["bundled:notes"], folder / "index", settings=IndexSettings(),
                embedder=KeywordEmbedder())  # fmt: skip
    return folder / "index", load_index(folder / "index", embedder=KeywordEmbedder())


@pytest.fixture(scope="module")
def built(notes_index, tmp_path_factory):
    out = tmp_path_factory.mktemp("quiz") / "quiz.jsonl"
    manifest = build_quiz(
        notes_index[0], out, mode="bm25", embedder=KeywordEmbedder(), log=lambda _: None
    )
    return out, manifest


def test_formulas_are_read_as_the_notes_write_them():
    kinetic = parse_formula(r"KE = \frac12 m v^2")
    assert kinetic.symbols == ("m", "v") and kinetic.evaluate({"m": 4, "v": 3}) == 18
    heat = parse_formula(r"Q = mc\Delta T")
    assert heat.evaluate({"m": 2, "c": 4186, r"\Delta T": 10}) == 83720
    assert parse_formula(r"P = I^2R").evaluate({"I": 2, "R": 4}) == 16
    assert parse_formula(r"k = Ae^{-E_a/RT}") is None  # e is not a quantity; /RT is ambiguous
    assert parse_formula(r"v = \sqrt{2gh}") is None
    assert formulas_in("The ideal gas law is $PV = nRT$.") == []  # PV is a product, not a name
    assert [f.target for f in formulas_in("Kinetic energy is $KE = \\frac12 m v^2$.")] == ["KE"]


def test_the_bundled_notes_give_the_issues_targets(built):
    out, manifest = built
    questions = read_quiz(out)
    assert len(questions) == manifest["written"] >= 150
    assert manifest["sections"] == len({(q.file, q.heading) for q in questions}) >= 30
    assert manifest["pass_rate"] >= 0.95
    assert manifest["passed"] + sum(manifest["dropped"].values()) == manifest["candidates"]
    assert set(manifest["kinds"]) == {"mcqa", "short", "numeric"}
    assert manifest["balance"]["balanced"] is True
    assert json.loads(manifest_path(out).read_text())["written"] == len(questions)
    for question in questions:  # the written answer is graded right, the others wrong
        assert grade(question, question.answer_text).correct, question.id
        assert question.explanation.startswith(f"The notes ({question.file}, ")
        wrong = [c for n, c in enumerate(question.choices) if n != question.answer]
        assert not any(grade(question, choice).correct for choice in wrong), question.id


def test_a_build_is_deterministic_and_count_spreads_over_sections(built, notes_index, tmp_path):
    out, _ = built
    again = tmp_path / "again.jsonl"
    build_quiz(notes_index[0], again, mode="bm25", embedder=KeywordEmbedder(), log=lambda _: None)
    assert again.read_bytes() == out.read_bytes()
    small = tmp_path / "small.jsonl"
    manifest = build_quiz(notes_index[0], small, mode="bm25", embedder=KeywordEmbedder(),
                          count=20, sections=["physics", "biology"], log=lambda _: None)  # fmt: skip
    questions = read_quiz(small)
    assert len(questions) == 20 and {q.file for q in questions} == {"physics.md", "biology.md"}
    asked = {q.heading for q in read_quiz(out) if q.file in ("physics.md", "biology.md")}
    assert manifest["sections"] == min(len(asked), 20)  # every section with a question


def test_the_hand_written_bad_questions_are_rejected(notes_index):
    questions = read_quiz(BAD)
    assert len(questions) == 20
    report = check_questions(questions, Notes.of_index(notes_index[1], mode="bm25"))
    reasons = {question.id: reason for question, reason, _ in report.dropped}
    assert report.kept == []  # the target is >= 18 of 20
    expected = {
        "ambiguous": {"ambiguous"},
        "two_right": {"second_right_answer"},
        "answer_in_stem": {"answer_in_stem"},
        "not_in_notes": {"passage_not_in_notes", "answer_not_in_passage"},
    }
    for question_id, reason in reasons.items():
        assert reason in expected[question_id.split("-", 2)[2]], (question_id, reason)


def test_a_question_is_dropped_for_its_first_failing_check(built, notes_index):
    question = read_quiz(built[0])[0]
    notes = Notes.of_index(notes_index[1], mode="bm25")
    far = Notes(notes.chunk_texts, lambda query, k: ["an unrelated chunk"] * k)
    assert check_questions([question], far).dropped[0][1] == "not_answerable"
    twice = check_questions([question, question], notes)
    assert [reason for _, reason, _ in twice.dropped] == ["duplicate"]


def test_grading_uses_the_tutor_graders(built):
    questions = read_quiz(built[0])
    choice = next(q for q in questions if q.kind == "mcqa")
    assert grade(choice, choice.letter.lower()).correct
    wrong_letter = "ABCD"[(choice.answer + 1) % 4]
    assert not grade(choice, wrong_letter).correct
    assert grade(choice, f"I think {choice.answer_text}").correct
    other = choice.choices[(choice.answer + 1) % 4]
    hedged = grade(choice, f"{choice.answer_text} or {other}")
    assert not hedged.correct and "also" in hedged.why
    numeric = next(q for q in questions if q.kind == "numeric")
    value = float(numeric.answer_text)
    assert grade(numeric, f"about {value * 1.005:.6g}").correct  # within 1 %
    assert not grade(numeric, f"{value * 1.1:.6g}").correct
    short = next(q for q in questions if q.kind == "short" and q.variants)
    assert grade(short, short.variants[0].upper()).correct
    assert not grade(short, "").correct


def test_the_terminal_quiz_grades_explains_and_scores(built):
    questions = [q for q in read_quiz(built[0]) if q.kind == "mcqa"][:3]
    replies = iter([questions[0].letter, "no idea", questions[2].answer_text])
    shown: list[str] = []
    graded = take_quiz(questions, ask=lambda prompt: next(replies), say=shown.append)
    assert [g.correct for g in graded] == [True, False, True]
    text = "\n".join(shown)
    assert "Question 1/3" in text and "A. " in text and "The notes (" in text
    assert f"not quite: the answer is {questions[1].answer_text}" in text
    assert shown[-1].startswith("score: 2/3\nsections to re-read:")
    assert questions[1].section in shown[-1]


def test_results_are_kept_per_student_in_sqlite(built, tmp_path):
    questions = read_quiz(built[0])[:4]
    graded = [grade(q, q.answer_text if n % 2 else "no") for n, q in enumerate(questions)]
    database = tmp_path / "results.sqlite"
    first = save_attempt(database, "ada", "quiz.jsonl", graded, when="2025-01-01T00:00:00")
    save_attempt(database, "bo", "quiz.jsonl", graded[:1], when="2025-01-02T00:00:00")
    assert attempts(database, "ada") == [
        {
            "id": first,
            "student": "ada",
            "quiz": "quiz.jsonl",
            "finished": "2025-01-01T00:00:00",
            "score": 2,
            "total": 4,
        }  # fmt: skip
    ]
    assert len(attempts(database)) == 2
    missed = dict(missed_sections(database, "ada"))
    assert sum(missed.values()) == 2
    assert summarize(graded).reread == [(questions[0].file, questions[0].heading)] + (
        []
        if questions[2].heading == questions[0].heading
        else [(questions[2].file, questions[2].heading)]  # fmt: skip
    )


def test_a_quiz_is_an_mcqa_eval_set(built):
    records = read_records(built[0], "mcqa", strict=True).records
    assert len(records) == len(read_quiz(built[0]))
    assert all(len(r.choices) == 4 and {"file", "section"} <= set(r.meta) for r in records)
    assert {r.answer for r in records} == {0, 1, 2, 3}


def test_the_model_writer_goes_through_the_same_checks(notes_index):
    from tutorlm.quiz.passages import passages_of

    transverse = next(p for p in passages_of(notes_index[1].chunks) if "In a transverse" in p.text)
    passages = [transverse] * 3
    good = {"question": "What kind of wave has its medium oscillate perpendicular to the direction "
            "of travel, as light does?", "answer": "transverse",
            "distractors": ["longitudinal", "standing", "sound"], "variants": ["a transverse wave"]}  # fmt: skip
    leaky = dict(good, question="A transverse wave: which kind of wave is light?")
    replies = iter([json.dumps(good), "Sure! " + json.dumps(leaky), "no JSON here"])
    writer = ModelGenerator(lambda messages: next(replies), "scripted")
    questions = writer.generate(passages)
    assert [q.generator for q in questions] == ["model:scripted"] * 2
    assert dict(writer.unparsed) == {"not the JSON asked for": 1}
    report = check_questions(questions, Notes.of_index(notes_index[1], mode="bm25"))
    assert [reason for _, reason, _ in report.dropped] == ["answer_in_stem"]
    assert parse_reply('{"question": "q?", "answer": "a", "distractors": ["b"]}') is None


def test_answer_ranks_count_shorter_choices_or_smaller_values(built):
    numeric = next(q for q in read_quiz(built[0]) if q.kind == "numeric")
    values = [float(c) for c in numeric.choices]
    assert values == sorted(values) and answer_rank(numeric) == numeric.answer


def test_quiz_take_on_the_command_line_saves_the_attempt(built, tmp_path, monkeypatch, capsys):
    from tutorlm.cli import main

    questions = read_quiz(built[0])
    asked = [q for q in questions if "physics" in q.file][:2]
    replies = iter([asked[0].answer_text, "no idea"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(replies))
    results = tmp_path / "results.sqlite"
    argv = ["quiz", "take", str(built[0]), "--sections", "physics", "--count", "2"]
    assert main([*argv, "--student", "ada", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "score: 1/2" in out and f"saved as attempt 1 of ada in {results}" in out
    assert [(a["score"], a["total"]) for a in attempts(results, "ada")] == [(1, 2)]
    assert main([*argv, "--student", "ada"]) == 1  # a name without a file is refused
