"""The tutoring source: rows in the served tutor's prompt that cite, abstain, hint and explain.

The rows are built over the bundled notes with BM25 search (chunks cut at whitespace,
so no embedding model loads) and a few reasoning-gym and CHAMP problems.
"""

from __future__ import annotations

import random
import re

import pytest
from rag_support import KeywordEmbedder
from serve_support import ScriptedEngine

from tutorlm.data.sources.tutoring import (
    ABSTAIN_REPLIES,
    TutoringReader,
)
from tutorlm.data.sources.tutoring_items import (
    Problem,
    assets_root,
    cite,
    explain_reply,
    gives_answer,
    hint_reply,
    load_questions,
    notes_split,
    split_questions,
    tutor_eval_items,
    worked_problems,
)
from tutorlm.data.tutoring_config import TutoringSource
from tutorlm.rag.prompt import MODE_PROMPTS, cited_numbers, tutor_messages
from tutorlm.rag.records import Chunk, Hit

CONFIG = dict(
    type="tutoring", name="tutor", generators=["chain_sum", "simple_equations"],
    per_generator=3, champ=2, seed=0,
)  # fmt: skip
ITEM_KEYS = {"id", "task", "mode", "question", "answer", "variants", "file", "section", "final"}
_SOURCE_LINE = re.compile(r"^\[(\d+)\] \(notes/([\w.]+), [^>]+ > (.+)\)$", re.M)


def build(kind: str, tokenizer, **changes) -> tuple[list, TutoringReader]:
    reader = TutoringReader(TutoringSource(**CONFIG, records=kind, **changes), kind, 0, kind)
    reader.tokenizer, reader.embedder = tokenizer, KeywordEmbedder()
    reader.check()
    return list(reader.records()), reader


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


@pytest.fixture(scope="module")
def sft_rows(tokenizer):
    return build("sft", tokenizer)[0]


@pytest.fixture(scope="module")
def pairs(tokenizer):
    return build("preference", tokenizer)[0]


def gold_numbers(user_turn: str, question: dict) -> list[int]:
    """The ``[n]`` of the notes in a prompt that come from the question's gold section."""
    return [
        int(number)
        for number, file, section in _SOURCE_LINE.findall(user_turn)
        if (file, section) == (question["file"], question["section"])
    ]


def by_behaviour(records, behaviour: str) -> list:
    return [record for record in records if record.id.startswith(f"{behaviour}-")]


def test_tutor_messages_are_what_the_served_tutor_builds(tokenizer):
    from tutorlm.serve.tutor import MODE_PROMPTS as SERVED_PROMPTS
    from tutorlm.serve.tutor import Tutor

    hits = [
        Hit(Chunk.make("notes/physics.md", 0, "F = ma.", None, "Physics > Newton's laws"), 2.0),
        Hit(Chunk.make("notes/physics.md", 1, "p = mv.", None, "Physics > Momentum"), 1.0),
    ]

    class FixedIndex:
        def search(self, question, k, mode):
            return hits

    engine = ScriptedEngine(tokenizer, ["ok"])
    question = [{"role": "user", "content": "What is Newton's second law?"}]
    assert MODE_PROMPTS == SERVED_PROMPTS
    for mode in ("tutor", "hint"):
        served = Tutor(engine, index=FixedIndex(), budget_tokens=256).prepare(question, mode=mode)
        ours = tutor_messages(question[0]["content"], hits, tokenizer, mode=mode, budget_tokens=256)
        assert ours == (served.messages, served.sources)
        bare = Tutor(engine).prepare(question, mode=mode)
        assert tutor_messages(
            question[0]["content"], [], tokenizer, mode=mode, budget_tokens=256
        ) == (
            bare.messages,
            [],
        )
    with pytest.raises(ValueError, match="unknown mode"):
        tutor_messages("q", [], tokenizer, mode="socratic", budget_tokens=64)


def test_cite_marks_every_sentence_and_gives_answer_reads_numbers_and_words():
    assert cite("F = ma. Force is in newtons (N).", 2) == "F = ma [2]. Force is in newtons (N) [2]."
    assert cite("It is 9.81 m/s^2 near Earth.", 1) == "It is 9.81 m/s^2 near Earth [1]."
    assert gives_answer("so x = 12.0 in the end", "12")
    assert not gives_answer("so x = 120", "12")
    assert gives_answer("divide: 5/14 of them", "5/14, or approximately 35.7%")
    assert gives_answer("it is 2×3×5", "2 × 3 × 5")
    assert not gives_answer("It is not obvious.", "No")
    assert gives_answer("No, it does not.", "No")


def test_grounded_rows_cite_the_gold_note_of_a_real_retrieval(sft_rows, pairs):
    qa = load_questions(assets_root(None))["qa"]
    questions = {f"grounded-{row['id']}": row for row in qa}
    rows = by_behaviour(sft_rows, "grounded")
    assert len(rows) == len(split_questions(TutoringSource(**CONFIG), "train")["qa"])
    for record in rows:
        question = questions[record.id]
        system, user, reply = record.messages
        assert system.content.startswith(MODE_PROMPTS["tutor"])
        assert user.content.endswith(f"Question: {question['question']}")
        gold = gold_numbers(user.content, question)
        assert gold, record.id
        assert reply.content == cite(question["answer"], gold[0])
        assert cited_numbers(reply.content, 3) == [gold[0]]
    for pair in by_behaviour(pairs, "grounded"):
        gold = gold_numbers(pair.prompt[1].content, questions[pair.id])
        rejected = cited_numbers(pair.rejected[0].content, 3)
        assert pair.meta["defect"] in ("uncited", "wrong_note"), pair.id
        assert rejected == [] if pair.meta["defect"] == "uncited" else rejected[0] not in gold
    assert {p.meta["defect"] for p in by_behaviour(pairs, "grounded")} == {"uncited", "wrong_note"}


def test_abstain_rows_say_the_notes_do_not_cover_it(sft_rows, pairs):
    rows = by_behaviour(sft_rows, "abstain")
    assert len(rows) == len(split_questions(TutoringSource(**CONFIG), "train")["unanswerable"])
    for record in rows:
        assert record.messages[1].content.startswith("Course notes:\n[1] (notes/")
        assert record.messages[2].content in ABSTAIN_REPLIES
    for pair in by_behaviour(pairs, "abstain"):
        assert pair.chosen[0].content in ABSTAIN_REPLIES
        assert re.search(r"\d", pair.rejected[0].content.replace("[1]", "")), pair.id
        assert pair.meta["defect"] == "fabricated_figure"


def test_hint_rows_never_hold_the_final_answer_and_explain_rows_end_with_it(pairs):
    hints, explains = by_behaviour(pairs, "hint"), by_behaviour(pairs, "explain")
    assert hints and explains
    for pair in hints:
        final = pair.meta["final"]
        assert pair.prompt[0].content.startswith(MODE_PROMPTS["hint"])  # + how to cite
        assert not gives_answer(pair.chosen[0].content, final), pair.id
        assert gives_answer(pair.rejected[0].content, final), pair.id
    for pair in explains:
        final = pair.meta["final"]
        assert pair.prompt[0].content.startswith(MODE_PROMPTS["tutor"])
        assert pair.prompt[1].content.startswith("Course notes:\n[1] (notes/")  # as served
        steps = pair.chosen[0].content.splitlines()
        assert len(steps) >= 3 and steps[-1] == f"The answer is {final}.", pair.id
        rejected = pair.rejected[0].content
        assert rejected in ("A", "B", "C", "D") or rejected == f"The answer is {final}."


def test_a_hint_falls_back_to_a_guiding_question_when_the_first_step_gives_the_answer():
    problem = Problem("p", "Calculate 4 + 9.", ["Work it out:", "4 + 9", "= 13"], "13", "chain_sum")
    assert hint_reply(problem, random.Random(0)) == ("What do the first two numbers give together?")
    steps = ["Start from 2*x + 3 = 11.", "Move the constant: 2*x = 11 - 3 = 8.", "x = 8 / 2 = 4."]
    equation = Problem("q", "Solve 2*x + 3 = 11.", steps, "4", "simple_equations")
    reply = hint_reply(equation, random.Random(0))
    assert "Move the constant: 2*x = 11 - 3 = 8." in reply and not gives_answer(reply, "4")
    assert explain_reply(equation).endswith("x = 8 / 2 = 4.\nThe answer is 4.")


def test_the_notes_split_is_deterministic_and_disjoint():
    config = TutoringSource(**CONFIG)
    train, test = split_questions(config, "train"), split_questions(config, "test")
    for kind in ("qa", "unanswerable"):
        train_ids = {row["id"] for row in train[kind]}
        test_ids = {row["id"] for row in test[kind]}
        assert not train_ids & test_ids and train_ids and test_ids
    assert len(train["qa"]) + len(test["qa"]) == 168
    assert [notes_split("notes-physics-waves-qa1", 0.25) for _ in range(3)] == ["test"] * 3
    assert split_questions(config, "test") == test


def test_tutor_eval_items_are_held_out_and_in_the_documented_format(sft_rows):
    config = TutoringSource(**CONFIG)
    items = tutor_eval_items(config)
    assert {item["task"] for item in items} == {"grounded", "abstain", "hint", "explain", "free"}
    trained = {record.id.split("-", 1)[1] for record in sft_rows}
    train_questions = {p.question for p in worked_problems(config, 0, "train")}
    for item in items:
        assert set(item) == ITEM_KEYS
        assert item["mode"] == ("hint" if item["task"] == "hint" else "tutor")
        assert item["id"].split("-", 1)[1] not in trained or item["task"] == "free"
        if item["task"] == "grounded":
            assert item["answer"] and item["file"] and item["section"] and item["final"] is None
        elif item["task"] == "abstain":
            assert (item["answer"], item["variants"], item["file"]) == ("", [], None)
        else:
            assert item["final"] and item["question"] not in train_questions
    assert len({item["id"] for item in items}) == len(items)
    assert tutor_eval_items(config) == items


def test_a_source_must_feed_its_own_kind_of_section(tokenizer):
    from tutorlm.data.examples import DataError

    reader = TutoringReader(TutoringSource(**CONFIG, records="sft"), "preference", 0, "prefs")
    reader.tokenizer = tokenizer
    with pytest.raises(DataError, match="records: sft cannot feed the preference section"):
        reader.check()


def test_questions_asked_without_their_gold_notes_are_answered_by_abstaining(tokenizer):
    """``abstain_without_gold``: an answerable question, asked with the notes retrieval
    returns once its gold section is taken out, gets the abstain reply; its prompt holds
    no note of the gold section."""
    rows, _ = build("sft", tokenizer, behaviours=["abstain"], abstain_without_gold=True)
    questions = {
        f"nogold-{q['id']}": q for q in split_questions(TutoringSource(**CONFIG), "train")["qa"]
    }
    nogold = [record for record in rows if record.id.startswith("abstain-nogold-")]
    assert nogold and len(nogold) <= len(questions)
    for record in nogold:
        question = questions[record.id.removeprefix("abstain-")]
        user = record.messages[1].content
        assert user.startswith("Course notes:\n[1] (notes/")
        assert gold_numbers(user, question) == []
        assert user.endswith(f"Question: {question['question'].strip()}")
        assert record.messages[2].content in ABSTAIN_REPLIES
