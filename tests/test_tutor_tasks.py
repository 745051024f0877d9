"""The tutor tasks end to end: items through a prompt, fixed replies, exact rates and files.

A fake generator answers each question with a reply written here, so every verdict,
rate and per-item row is known in advance; one test runs the tiny random model
through the real transformers generator to check the default path runs.
"""

from __future__ import annotations

import json

import pytest

from tutorlm.bulk import Generated
from tutorlm.evaluate.tutor import (
    TUTOR_TASKS,
    TutorEvalError,
    notes_prompt_for,
    predictions_name,
    read_verdicts,
    run_tutor_tasks,
    tutor_line,
    tutor_markdown,
    tutor_metrics,
)
from tutorlm.rag.records import Chunk, Hit

NOTES = [
    Hit(Chunk.make("notes/physics.md", 0, "Kinematics text", None, "Physics > Kinematics"), 0.9),
    Hit(Chunk.make("notes/physics.md", 1, "F = ma text", None, "Physics > Newton's laws"), 0.8),
    Hit(Chunk.make("notes/chemistry.md", 0, "Atoms text", None, "Chemistry > Atoms"), 0.7),
]


def item(id_, task, question, answer="", *, mode="tutor", file=None, section=None, final=None):
    return {
        "id": id_,
        "task": task,
        "mode": mode,
        "question": question,
        "answer": answer,
        "variants": [],
        "file": file,
        "section": section,
        "final": final,
    }


GOLD = {"file": "physics.md", "section": "Newton's laws"}
ITEMS = [
    item("g1", "grounded", "State Newton's second law.", "F = ma", **GOLD),
    item("g2", "grounded", "What is the second law?", "F = ma", **GOLD),
    item("g3", "grounded", "Give the second law.", "F = ma", **GOLD),
    item("g4", "grounded", "What is g near the surface?", "9.81 m/s^2"),  # no gold note
    item("a1", "abstain", "When did the author first teach?"),
    item("a2", "abstain", "When was the lab built?"),
    item("h1", "hint", "Solve 20*q - 3 = 237", "12", mode="hint", final="12"),
    item("h2", "hint", "Solve 20*p - 3 = 237", "p = 12", mode="hint", final="12"),
    item("e1", "explain", "Solve 20*r - 3 = 237", "12", final="12"),
    item("e2", "explain", "Solve 20*s - 3 = 237", "12", final="12"),
    item("f1", "free", "What is 4 + 9 + 8?", "21"),
    item("f2", "free", "Why do objects fall?", "gravity"),
    item("f3", "free", "What is 3 * 7?", "21"),
]
REPLIES = {
    "State Newton's second law.": "The second law is F = ma [2].",
    "What is the second law?": "F = m a, force is mass times acceleration [1].",
    "Give the second law.": "The answer is: [4]",
    "What is g near the surface?": "About 9.8 m/s² [1].",
    "When did the author first teach?": "I could not find this in the notes.",
    "When was the lab built?": "The notes don't say, but it is 1879.",
    "Solve 20*q - 3 = 237": "Add 3 to both sides first. What is left?",
    "Solve 20*p - 3 = 237": "Add 3, divide by 20: p = 12.",
    "Solve 20*r - 3 = 237": "Add 3: 20r = 240.\nDivide by 20.\nThe answer is 12.",
    "Solve 20*s - 3 = 237": "12",
    "What is 4 + 9 + 8?": "B",
    "Why do objects fall?": "Because gravity pulls them down.",
    "What is 3 * 7?": "21",
}


class FixedReplies:
    """A generator that answers each prompt's question with its reply in ``REPLIES``."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, sampling, *, max_new_tokens=None, desc="generate"):
        assert sampling.greedy
        self.prompts.extend(prompts)
        questions = [p[-1]["content"].rsplit("Question: ", 1)[1] for p in prompts]
        return [Generated(REPLIES[q], 5, "stop") for q in questions]


def prompt_for(item):
    messages = [
        {"role": "system", "content": f"{item['mode']} mode"},
        {"role": "user", "content": f"Course notes: ...\n\nQuestion: {item['question']}"},
    ]
    return messages, NOTES


EXPECTED = {  # metric: (count, n, ungraded)
    "tutor:grounded": (3, 4, 0),  # g3 cites without content
    "tutor:citation_precision": (3, 4, 0),  # g3 cites [4] of 3
    "tutor:citation_correctness": (1, 3, 1),  # g2 cites the near miss, g4 has no gold
    "tutor:abstention": (1, 2, 0),  # a2 fabricates 1879
    "tutor:hint_leakage": (1, 2, 0),  # h2 gives p = 12
    "tutor:explanation": (1, 2, 0),  # e2 is a bare answer
    "tutor:letter_collapse": (1, 3, 0),  # f1 answers "B"
}


@pytest.fixture
def ran(tmp_path):
    generator = FixedReplies()
    results = run_tutor_tasks(
        None,
        None,
        ITEMS,
        prompt_for=prompt_for,
        out_dir=tmp_path,
        generator=generator,
        resamples=200,
    )
    return results, generator, tmp_path


def test_every_metric_has_its_exact_rate_and_an_ordered_interval(ran):
    results, generator, _ = ran
    assert len(generator.prompts) == len(ITEMS)  # each item asked once
    assert list(results["tasks"]) == list(EXPECTED) and results["skipped"] == {}
    for name, (count, n, ungraded) in EXPECTED.items():
        entry = results["tasks"][name]
        rate = entry["rate"]
        assert (entry["count"], entry["n"], entry["ungraded"]) == (count, n, ungraded), name
        assert rate["value"] == pytest.approx(count / n) and rate["n"] == n
        assert 0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1
        assert rate["low"] < rate["high"]  # mixed verdicts: a real interval
    assert results["tasks"]["tutor:hint_leakage"]["better"] == "higher"
    assert results["tasks"]["tutor:letter_collapse"]["better"] == "lower"


def test_each_metric_writes_one_row_per_item_to_audit(ran):
    results, _, out = ran
    rows = [
        json.loads(line)
        for line in (out / "predictions.tutor-citation_correctness.jsonl").read_text().splitlines()
    ]
    assert [row["id"] for row in rows] == ["g1", "g2", "g3", "g4"]
    assert [row["verdict"] for row in rows] == [True, False, False, None]
    g2 = rows[1]
    assert g2["prompt"] == prompt_for(ITEMS[1])[0]
    assert g2["reply"] == REPLIES["What is the second law?"]
    assert g2["sources"][1] == "notes/physics.md, Physics > Newton's laws"
    assert g2["finish_reason"] == "stop" and g2["task"] == "tutor:citation_correctness"
    assert g2["why"].startswith("cites [1] notes/physics.md, Physics > Kinematics")
    assert rows[3]["why"] == "no gold note to grade against"
    for name in EXPECTED:
        assert (out / predictions_name(name)).is_file()
        assert results["tasks"][name]["predictions"] == predictions_name(name)


def test_verdicts_read_back_by_id_for_paired_comparisons(ran):
    _, _, out = ran
    assert read_verdicts(out / predictions_name("tutor:hint_leakage")) == {"h1": True, "h2": False}
    assert read_verdicts(out / predictions_name("tutor:citation_correctness")) == {
        "g1": True,
        "g2": False,
        "g3": False,
    }


def test_named_tasks_ask_only_their_items(tmp_path):
    generator = FixedReplies()
    results = run_tutor_tasks(
        None,
        None,
        ITEMS,
        prompt_for=prompt_for,
        out_dir=tmp_path,
        tasks=["tutor:abstention", "tutor:letter_collapse"],
        generator=generator,
        resamples=0,
    )
    assert list(results["tasks"]) == ["tutor:abstention", "tutor:letter_collapse"]
    assert len(generator.prompts) == 5
    collapse = results["tasks"]["tutor:letter_collapse"]["rate"]
    assert collapse["low"] == collapse["value"] == collapse["high"]  # no resamples
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "predictions.tutor-abstention.jsonl",
        "predictions.tutor-letter_collapse.jsonl",
    ]


def test_a_metric_without_items_is_skipped_with_its_reason(tmp_path):
    results = run_tutor_tasks(
        None,
        None,
        ITEMS[:4],
        prompt_for=prompt_for,
        out_dir=tmp_path,
        tasks=["tutor:grounded", "tutor:explanation"],
        generator=FixedReplies(),
    )
    assert list(results["tasks"]) == ["tutor:grounded"]
    assert results["skipped"] == {"tutor:explanation": "no gradable explain items"}


def test_task_names():
    assert TUTOR_TASKS[0] == "tutor" and len(TUTOR_TASKS) == 8
    assert [m.name for m in tutor_metrics(None)] == list(TUTOR_TASKS[1:])
    assert [m.name for m in tutor_metrics(["tutor:explanation", "tutor"])] == list(TUTOR_TASKS[1:])
    with pytest.raises(TutorEvalError, match="unknown tutor task"):
        tutor_metrics(["tutor:vibes"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "g1"}, "the id is used twice"),
        ({"task": "mcqa"}, "task 'mcqa'"),
        ({"mode": "socratic"}, "mode 'socratic'"),
        ({"answer": "", "final": None}, "needs an answer"),
    ],
)
def test_items_that_cannot_be_graded_are_refused(tmp_path, change, message):
    items = [ITEMS[0], {**ITEMS[1], **change}]
    with pytest.raises(TutorEvalError, match=message):
        run_tutor_tasks(
            None, None, items, prompt_for=prompt_for, out_dir=tmp_path, generator=FixedReplies()
        )


def test_a_missing_key_is_named(tmp_path):
    broken = {k: v for k, v in ITEMS[0].items() if k != "variants"}
    with pytest.raises(TutorEvalError, match="'g1': missing variants"):
        run_tutor_tasks(
            None, None, [broken], prompt_for=prompt_for, out_dir=tmp_path, generator=FixedReplies()
        )


def test_markdown_and_console_line(ran):
    results, _, _ = ran
    results["skipped"]["tutor:extra"] = "no gradable free items"
    table = tutor_markdown(results)
    lines = table.splitlines()
    assert lines[0] == "| task | rate [95 % CI] | count / n | better | counts when |"
    assert len(lines) == 2 + len(EXPECTED) + 1
    assert lines[-1] == "| tutor:extra | – | – | – | skipped: no gradable free items |"
    entry = results["tasks"]["tutor:citation_correctness"]
    assert f"| 1 / 3 | higher | {entry['counts']} |" in table
    assert tutor_line("tutor:abstention", results["tasks"]["tutor:abstention"]).startswith(
        "tutor:abstention            0.500 ["
    )


def test_the_tiny_model_answers_through_the_transformers_generator(tiny_model_dir, tmp_path):
    from tutorlm.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    results = run_tutor_tasks(
        model,
        tokenizer,
        [ITEMS[4], ITEMS[10]],
        prompt_for=prompt_for,
        out_dir=tmp_path,
        max_new_tokens=3,
        batch_size=2,
    )
    assert {name: entry["n"] for name, entry in results["tasks"].items()} == {
        "tutor:abstention": 1,
        "tutor:letter_collapse": 1,
    }
    row = json.loads((tmp_path / "predictions.tutor-abstention.jsonl").read_text())
    assert row["id"] == "a1" and isinstance(row["reply"], str)
    assert isinstance(row["verdict"], bool) and row["why"]


class FakeIndex:
    """Returns the three notes for any question, and records what it was asked."""

    def __init__(self):
        self.searches = []

    def search(self, query, k=3, mode="hybrid"):
        self.searches.append((query, k, mode))
        return NOTES[:k]


def test_notes_prompt_for_is_the_served_tutors_prompt(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    from tutorlm.rag.prompt import tutor_messages

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    index = FakeIndex()
    prompt_for = notes_prompt_for(index, tokenizer, k=2, search_mode="bm25", budget_tokens=256)
    hint = ITEMS[6]
    messages, sources = prompt_for(hint)
    assert index.searches == [(hint["question"], 2, "bm25")]
    assert (messages, sources) == tutor_messages(
        hint["question"], NOTES[:2], tokenizer, mode="hint", budget_tokens=256
    )
    assert messages != prompt_for({**hint, "mode": "tutor"})[0]  # the mode's own prompt


def test_the_tutor_limit_keeps_the_first_items_of_each_kind_in_order():
    from tutorlm.evaluate.tutor import first_of_each

    items = [{"id": str(i), "task": task} for i, task in enumerate("gghgahhg")]
    assert [item["id"] for item in first_of_each(items, 2)] == ["0", "1", "2", "4", "5"]
    assert first_of_each(items, None) == items
