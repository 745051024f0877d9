"""Each data rule of the three reports, on hand-made rows with exact expectations."""

from __future__ import annotations

import random
import re

import pytest

from tutorlm.bulk import Generated
from tutorlm.data.config import (
    AnnotatedConfig,
    CorruptConfig,
    DataConfig,
    DistractorConfig,
    PairingConfig,
)
from tutorlm.data.examples import DataError, Example, Row, Skip
from tutorlm.data.presets import ANNOTATED, MMLU_SUBJECTS, PAIRING
from tutorlm.data.rules import annotated, corrupt, mixing, ranked
from tutorlm.data.rules.mcqa import balanced_plan, final_answer, free_form_to_choices
from tutorlm.data.rules.text import html_to_text, last_boxed, numbers_in, parse_number

# --- text ---------------------------------------------------------------------------


def test_html_to_text_keeps_code_blocks_inline_code_latex_and_lists():
    html = (
        "<p>Use <code>a&lt;b</code> when $x &lt; y$.</p>\n"
        "<pre><code>for i in range(2):\n    print(i)\n</code></pre>"
        "<ul><li>one</li><li>two <b>bold</b></li></ul>"
    )
    assert html_to_text(html) == (
        "Use `a<b` when $x < y$.\n\n```\nfor i in range(2):\n    print(i)\n```\n\n- one\n- two bold"
    )


def test_numbers_boxed_and_parse():
    assert [m.group() for m in numbers_in("x_2 = 5-3, then -4.5 and 10%")] == [
        "5",
        "3",
        "-4.5",
        "10",
    ]
    assert last_boxed(r"a \boxed{1} then \boxed{\frac{7}{8}}") == r"\frac{7}{8}"
    assert (parse_number("1,200"), parse_number("-3.5"), parse_number("2^(n-1)")) == (
        1200,
        -3.5,
        None,
    )


def test_final_answer_from_gsm8k_boxed_and_closing_sentence():
    assert final_answer(Example("qa", "1", question="q", answer="... #### 72")) == "72"
    assert final_answer(Example("qa", "1", question="q", answer=r"so \boxed{5}.")) == "5"
    assert final_answer(Example("qa", "1", question="q", answer="The answer is: 18")) == "18"
    with pytest.raises(Skip, match="no_final_answer"):
        final_answer(Example("qa", "1", question="q", answer="It depends."))


# --- Stack Exchange -------------------------------------------------------------------

ANSWERS = [("meh", 3.0), ("best", 12.0), ("fine", 5.0), ("bad", 1.0), ("good", 7.0)]


def test_best_answer_min_score_epfllama():
    assert ranked.best_answer(ANSWERS, 4) == "best"
    with pytest.raises(Skip, match="best_answer_min_score"):
        ranked.best_answer([("low", 3.0)], 4)


def test_probllms_pairing_chosen_top_at_least_10_rejected_in_3_to_5():
    rule = PairingConfig(**PAIRING["probllms"])
    pairs = {ranked.pick_pair(ANSWERS, rule, random.Random(s))[:2] for s in range(20)}
    assert pairs == {("best", "meh"), ("best", "fine")}
    with pytest.raises(Skip, match="chosen_min_score"):
        ranked.pick_pair([("a", 9.0), ("b", 4.0)], rule, random.Random(0))
    with pytest.raises(Skip, match="rejected_score_range"):
        ranked.pick_pair([("a", 15.0), ("b", 7.0), ("c", 1.0)], rule, random.Random(0))


def test_epfllama_pairing_best_vs_worst_both_at_least_2():
    rule = PairingConfig(**PAIRING["epfllama"])
    assert ranked.pick_pair([("a", 2.0), ("b", 6.0), ("c", 3.0)], rule, random.Random(0)) == (
        "b",
        "a",
        6.0,
        2.0,
    )
    with pytest.raises(Skip, match="rejected_score_range"):
        ranked.pick_pair(ANSWERS, rule, random.Random(0))  # worst scores 1
    with pytest.raises(Skip, match="tied_scores"):
        ranked.pick_pair([("a", 3.0), ("b", 3.0)], rule, random.Random(0))


# --- annotated pairs -------------------------------------------------------------------


def _annotated(overall, a="Answer A.", b="Answer B.", correctness="A", options=None, group="q1"):
    grades = {"overall": overall, "correctness": correctness}
    return Example(
        "annotated", "u", group=group, question="Q?", a=a, b=b, grades=grades, options=options
    )


def test_annotated_filters_of_each_report():
    zephyr, probllms = (
        AnnotatedConfig(**ANNOTATED["zephyr"]),
        AnnotatedConfig(**ANNOTATED["probllms"]),
    )
    epfllama = AnnotatedConfig(**ANNOTATED["epfllama"])
    assert annotated.filter_pair(_annotated("B"), zephyr) == ("Answer B.", "Answer A.")
    with pytest.raises(Skip, match="annotated_tie"):
        annotated.filter_pair(_annotated("AB"), zephyr)
    with pytest.raises(Skip, match="annotated_empty"):
        annotated.filter_pair(_annotated("A", b="?!"), zephyr)
    both_wrong = _annotated("A", correctness="None")
    assert annotated.filter_pair(both_wrong, zephyr) == ("Answer A.", "Answer B.")
    with pytest.raises(Skip, match="annotated_both_incorrect"):
        annotated.filter_pair(both_wrong, probllms)
    with pytest.raises(Skip, match="annotated_mcqa"):
        annotated.filter_pair(_annotated("A", options=["x", "y"]), epfllama)


def test_mcqa_chosen_answers_become_one_letter_by_majority_vote():
    options = ["2", "3", "4", "5"]
    rows = [
        _annotated("A", a="The answer is C.", options=options),
        _annotated("B", b="(C) because 2+2=4", options=options),
        _annotated("A", a="Option B", options=options),
        _annotated("B", b="I think 5", options=options, group="q2"),
        _annotated("A", a="B", options=options, group="q2"),
    ]
    assert annotated.majority_letters(rows) == {"q1": (2, 2), "q2": (1, 1)}
    assert annotated.answer_letter("It is clearly 4.", options) == "C"
    assert annotated.answer_letter("no idea", options) is None


# --- MCQA from free-form answers -------------------------------------------------------


def _numeric_questions(n, rule, seed=0):
    rng = random.Random(seed)
    plan = balanced_plan(n, rng)
    out = []
    for i, (rank, position) in enumerate(plan):
        value = rng.randint(20, 1000)
        example = Example("qa", str(i), question="q", answer="a", final=str(value))
        choices, answer, meta = free_form_to_choices(example, rule, rank, position, rng)
        out.append((choices, answer, meta))
    return out


def test_balanced_numeric_distractors_defeat_pick_a_and_pick_the_median():
    rule = DistractorConfig(method="numeric", offset=10, balanced=True)
    items = _numeric_questions(2000, rule)
    for choices, answer, meta in items[:50]:
        values = [int(c) for c in choices]
        assert len(set(values)) == 4 and all(abs(v - values[answer]) <= 10 for v in values)
        assert meta["method"] == "numeric_balanced"
    pick_a = sum(answer == 0 for _, answer, _ in items) / len(items)
    median = sum(
        sorted(int(c) for c in choices)[1] == int(choices[answer]) for choices, answer, _ in items
    ) / len(items)
    assert pick_a == 0.25
    assert median == 0.25


def test_reports_plain_offsets_favour_the_median_which_balancing_fixes():
    rule = DistractorConfig(method="numeric", offset=10, balanced=False)
    items = _numeric_questions(2000, rule)
    median = sum(
        sorted(int(c) for c in choices)[1:3].count(int(choices[answer]))
        for choices, answer, _ in items
    ) / len(items)
    assert median > 0.6  # the two middle values hold the answer far more than half the time


def test_boxed_answers_get_one_number_perturbed_within_5():
    rule = DistractorConfig(method="boxed", offset=5)
    example = Example("qa", "1", question="q", answer=r"so \boxed{\frac{17}{28}}")
    for seed in range(10):
        choices, answer, meta = free_form_to_choices(example, rule, 2, 3, random.Random(seed))
        assert (answer, choices[answer], meta["final"]) == (3, r"\frac{17}{28}", r"\frac{17}{28}")
        parts = [re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", c).groups() for c in choices]
        varying = [i for i in (0, 1) if len({p[i] for p in parts}) > 1]
        assert len(varying) == 1 and len(set(choices)) == 4  # exactly one number perturbed
        values = sorted(int(p[varying[0]]) for p in parts)
        true = int(parts[answer][varying[0]])
        assert values.index(true) == 2 and values[-1] - values[0] <= 10


def test_non_negative_answers_keep_non_negative_options():
    rule = DistractorConfig(method="numeric", offset=10)
    example = Example("qa", "1", question="q", answer="a", final="1")
    choices, answer, _ = free_form_to_choices(example, rule, 3, 0, random.Random(0))
    assert min(int(c) for c in choices) >= 0 and choices[answer] == "1"


# --- corrupted pairs -------------------------------------------------------------------

WORKED = "Start with 12 apples.\nEat 3: 12 - 3 = 9.\nBuy 11 more: 9 + 11 = 20.\nThe answer is 20."


def test_rule_corruption_applies_two_of_three_ops_and_states_a_wrong_final():
    corruptor = corrupt.Corruptor(CorruptConfig(method="rules"), "unused")
    example = Example("qa", "1", question="How many apples?", answer=WORKED)
    seen_ops = set()
    for seed in range(30):
        text, ops = corruptor.corrupt(example, "20", random.Random(seed))
        assert len(ops) == 2 and text != WORKED
        assert not text.rstrip().endswith("The answer is 20.")
        if "insert" in ops:
            assert any(s in text for s in corrupt.IRRELEVANT_SENTENCES)
        seen_ops.add(tuple(sorted(ops)))
    assert len(seen_ops) == 3


def test_rule_corruption_of_prose_swaps_a_comparative_and_fails_when_nothing_applies():
    rule = CorruptConfig(method="rules", ops=["substitute"], n_ops=1)
    corruptor = corrupt.Corruptor(rule, "unused")
    prose = Example("qa", "1", question="q", answer="Pressure increases with depth.")
    assert corruptor.corrupt(prose, None, random.Random(0)) == (
        "Pressure decreases with depth.",
        ["substitute"],
    )
    with pytest.raises(Skip, match="corruption_failed"):
        corruptor.corrupt(Example("qa", "2", question="q", answer="Yes."), None, random.Random(0))


class MarkingGenerator:
    """A bulk generator that appends the operation's name to the answer it is given."""

    def __init__(self):
        self.calls = []

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, sampling, *, max_new_tokens=None, desc=""):
        self.calls.append(prompts)
        out = []
        for system, user in prompts:
            op = next(
                op for op, text in corrupt.CORRUPTION_PROMPTS.items() if text == system["content"]
            )
            answer = user["content"].split("Correct answer:\n")[1].split("\n\nReply with")[0]
            out.append(Generated(answer + f" [{op}]", 3, "stop"))
        return out


def test_model_corruption_uses_the_appendix_a_prompts():
    generator = MarkingGenerator()
    corruptor = corrupt.Corruptor(
        CorruptConfig(method="model", n_ops=2), "some-model", generators=lambda spec: generator
    )
    text, ops = corruptor.corrupt(
        Example("qa", "1", question="q", answer="Water boils at 100 C."), None, random.Random(3)
    )
    assert [p[0][0]["content"] for p in generator.calls] == [
        corrupt.CORRUPTION_PROMPTS[op] for op in ops
    ]
    assert text == "Water boils at 100 C." + "".join(f" [{op}]" for op in ops)
    assert len(set(ops)) == 2 and set(corrupt.CORRUPTION_PROMPTS) == {
        "remove",
        "substitute",
        "insert",
    }


def test_bulk_corruption_keeps_each_answers_ops_one_call_per_operation():
    generator = MarkingGenerator()
    rule = CorruptConfig(method="model", n_ops=2)
    corruptor = corrupt.Corruptor(rule, "m", generators=lambda spec: generator)
    examples = [Example("qa", str(i), question=f"q{i}", answer=f"Answer {i}.") for i in range(6)]
    corruptor.prepare(examples, random.Random(0))
    assert [len(call) for call in generator.calls] == [6, 6]
    rng = random.Random(0)
    drawn = [corruptor._plan(e.answer, rng).queue for e in examples]  # the same draws
    for example, ops in zip(examples, drawn, strict=True):
        text, applied = corruptor.corrupt(example, None, random.Random(1))
        assert applied == ops and text == example.answer + "".join(f" [{op}]" for op in ops)
    assert len(generator.calls) == 2  # corrupt() took what prepare() made


def test_corruption_budget_follows_the_chosen_answer_up_to_the_cap():
    assert corrupt.corruption_budget(10, 1024) == 84
    assert corrupt.corruption_budget(900, 1024) == 1024
    assert CorruptConfig().max_new_tokens == 1024 and CorruptConfig().over_budget == "drop"


# --- mixing and splitting --------------------------------------------------------------


def test_cap_takes_min_cap_s_and_count_is_exact():
    rows = list(range(100))
    assert (
        mixing.sample(rows, cap=30, count=None, rng=random.Random(0), source="s")[:3]
        == sorted(mixing.sample(rows, cap=30, count=None, rng=random.Random(0), source="s"))[:3]
    )
    assert len(mixing.sample(rows, cap=30, count=None, rng=random.Random(0), source="s")) == 30
    assert len(mixing.sample(rows, cap=300, count=None, rng=random.Random(0), source="s")) == 100
    assert len(mixing.sample(rows, cap=None, count=40, rng=random.Random(0), source="s")) == 40
    with pytest.raises(DataError, match="source 's': count 101 asked but only 100 rows remain"):
        mixing.sample(rows, cap=None, count=101, rng=random.Random(0), source="s")


def test_split_by_ratio_keeps_groups_whole_and_is_seeded():
    rows = [Row(record=i, group=f"g{i // 2}", source="s") for i in range(200)]
    split = mixing.split_rows(rows, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 160, "val": 20, "test": 20}
    groups = {k: {r.group for r in v} for k, v in split.items()}
    assert not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    again = mixing.split_rows(rows, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert [r.record for r in again["test"]] == [r.record for r in split["test"]]
    other = mixing.split_rows(rows, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=1)
    assert [r.record for r in other["test"]] != [r.record for r in split["test"]]


def test_a_section_without_test_never_puts_others_test_groups_in_val():
    rows = [Row(record=i, group=f"g{i}", source="s") for i in range(100)]
    prefs = mixing.split_rows(rows, {"train": 0.7, "test": 0.3}, seed=5)
    sft = mixing.split_rows(rows, {"train": 0.9, "val": 0.1}, seed=5)
    assert not {r.group for r in prefs["test"]} & {r.group for r in sft["val"]}


def test_split_presets_and_bad_ratios():
    cfg = DataConfig.model_validate({"sft": {"split": "95/5", "sources": [_notes()]}})
    assert cfg.sft.split == {"train": 0.95, "val": 0.05}
    with pytest.raises(ValueError, match="sum to 1"):
        DataConfig.model_validate({"sft": {"split": {"train": 0.5}, "sources": [_notes()]}})
    assert len(MMLU_SUBJECTS["probllms_stem"]) == 23


def _notes():
    return {"type": "notes", "name": "n"}


def test_model_corruption_runs_a_real_generator(tiny_model_dir):
    rule = CorruptConfig(
        method="model", max_new_tokens=6, temperature=1.0, ensure_wrong=False, over_budget="keep"
    )
    corruptor = corrupt.Corruptor(rule, str(tiny_model_dir))
    example = Example("qa", "1", question="What is 2 + 3?", answer="2 + 3 = 5.")
    text, ops = corruptor.corrupt(example, None, random.Random(0))
    assert len(ops) == 2 and text.strip() and text != example.answer
    assert corruptor.corrupt(example, None, random.Random(0)) == (text, ops)  # seeded
    weights = corruptor.generator()  # the same weights, loaded once
    greedy = corrupt.Corruptor(
        rule.model_copy(update={"temperature": 0.0}), "x", generators=lambda spec: weights
    )
    with pytest.raises(Skip, match="corruption_failed"):  # a random model greedily writes blanks
        greedy.corrupt(example, None, random.Random(0))
    dropping = corrupt.Corruptor(
        rule.model_copy(update={"over_budget": "drop"}), "x", generators=lambda spec: weights
    )
    with pytest.raises(Skip, match="corruption_truncated"):  # it never ends within 6 tokens
        dropping.corrupt(example, None, random.Random(0))
