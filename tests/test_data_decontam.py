"""Exact dedup, verbatim test questions, 13-gram decontamination, and the template/length
rules."""

from __future__ import annotations

import json

import pytest

from tutorlm.data.examples import Skip
from tutorlm.data.formats import MCQARecord, Message, PreferenceRecord, SFTRecord
from tutorlm.data.rules.dedup import EvalIndex, HeldOutQuestions, dedup_key
from tutorlm.data.rules.length import LengthRule, with_system

LONG_Q = (
    "A train leaves the station at nine in the morning and travels at sixty kilometres "
    "per hour towards a city three hundred kilometres away"
)


def sft(text: str, reply: str = "ok", rid: str = "s") -> SFTRecord:
    return SFTRecord(
        id=rid,
        source="t",
        messages=[Message(role="user", content=text), Message(role="assistant", content=reply)],
    )


def mcqa(question: str, rid: str = "m") -> MCQARecord:
    return MCQARecord(id=rid, source="t", question=question, choices=["1", "2"], answer=0)


def test_a_shared_13_gram_is_contamination_and_12_words_are_not():
    index = EvalIndex(n=13)
    index.add_record(mcqa(LONG_Q), "mcqa.test.jsonl", "item1")
    words = LONG_Q.split()
    assert index.match(sft("Tell me: " + " ".join(words[5:18]) + " please")) == "mcqa.test.jsonl"
    assert index.match(sft("Tell me: " + " ".join(words[5:17]) + " please")) is None
    assert (
        index.match(sft(LONG_Q.upper().replace(" ", "  ,"))) == "mcqa.test.jsonl"
    )  # case, punctuation


def test_short_eval_questions_match_whole():
    index = EvalIndex(n=13)
    index.add_record(mcqa("Find the LCM of 76 and 70."), "mcqa.test.jsonl", "item1")
    assert index.match(sft("Please find the LCM of 76 and 70.")) == "mcqa.test.jsonl"
    assert index.match(sft("Find the LCM of 76 and 71.")) is None
    index.add_record(mcqa("Why?"), "mcqa.test.jsonl", "item2")  # under min_words: ignored
    assert index.match(sft("Why? Because.")) is None


def test_template_wording_shared_by_many_items_is_not_contamination():
    template = "write the factors separated by a cross for example for twelve the answer would be"
    index = EvalIndex(n=13, template_groups=3)
    for i in range(5):
        index.add_record(
            mcqa(f"Find the prime factorization of {100 + i}. {template}"), "e", f"g{i}"
        )
    training = sft(f"Find the prime factorization of 999. {template}")
    index.note_training(training, "train-1")
    assert index.match(training) is None
    same_item = sft(f"Find the prime factorization of 102. {template}")
    assert index.match(same_item) == "e"


def test_eval_pairs_index_prompt_and_chosen_but_not_rejected():
    filler = "Honey stored in a sealed jar can keep for a very long time and still taste good"
    pair = PreferenceRecord(
        id="p",
        source="t",
        prompt=[Message(role="user", content="What is 2 + 2?")],
        chosen=[Message(role="assistant", content="It is four.")],
        rejected=[Message(role="assistant", content=f"It is five. {filler}")],
    )
    index = EvalIndex(n=13)
    index.add_record(pair, "prefs.test.jsonl", "g")
    assert index.match(sft("Tell me a fact.", filler)) is None


FACTORIZE = (
    "Find the prime factorization of 120. Write the factors separated by × "
    "(Example: for 12 the answer would be: 2 × 2 × 3)"
)


def pair(question: str, system: str = "Be a tutor.") -> PreferenceRecord:
    return PreferenceRecord(
        id="p",
        source="t",
        prompt=[Message(role="system", content=system), Message(role="user", content=question)],
        chosen=[Message(role="assistant", content="Right.")],
        rejected=[Message(role="assistant", content="Wrong.")],
    )


def test_a_test_question_asked_again_is_a_leak_whatever_the_template_rule_says():
    # the demo's generator drew 120 four times: its own 13-grams look like a template
    index, questions = EvalIndex(n=13, template_groups=3), HeldOutQuestions()
    index.add_record(mcqa(FACTORIZE), "mcqa.test.jsonl", "test-1")
    questions.add_record(mcqa(FACTORIZE), "mcqa.test.jsonl")
    lettered = sft(FACTORIZE + "\nA. 2 × 2 × 2 × 3 × 5\nB. 2 × 3 × 4 × 5\nAnswer:", "A")
    again = [mcqa(FACTORIZE.upper().replace(" ", "  ")), lettered, pair(FACTORIZE)]
    for group, record in enumerate(again):
        index.note_training(record, f"train-{group}")
    assert [index.match(record) for record in again] == [None, None, None]
    assert [questions.match(record) for record in again] == ["mcqa.test.jsonl"] * 3


def test_held_out_questions_match_whole_words_and_only_questions():
    questions = HeldOutQuestions()
    questions.add_record(mcqa("Find the LCM of 76 and 70."), "mcqa.test.jsonl")
    questions.add_record(pair("What is 2 + 2?", system="Find the LCM of 3 and 4."), "prefs.test")
    questions.add_record(sft("Why?", "Find the GCD of 8 and 12."), "sft.test.jsonl")
    assert questions.match(sft("Please find the LCM of 76 and 70. Show steps.")) == (
        "mcqa.test.jsonl"
    )
    assert questions.match(mcqa("Find the LCM of 76 and 700.")) is None
    assert questions.match(mcqa("Find the LCM of 76 and 70")) is None  # not verbatim
    assert questions.match(pair("  what IS 2 + 2?  ")) == "prefs.test"
    assert questions.match(sft("Why?")) == "sft.test.jsonl"  # short: equal only
    assert questions.match(sft("Why? Because.")) is None
    assert questions.match(sft("Hello.", "What is 2 + 2?")) is None  # replies are not asked
    assert questions.match(sft("Find the LCM of 3 and 4.")) is None  # system turns neither
    assert questions.match(sft("Find the GCD of 8 and 12.")) is None


def test_held_out_questions_from_an_extra_eval_file(tmp_path):
    path = tmp_path / "extra.jsonl"
    rows = [
        {"question": "Which planet is largest?", "choices": ["a", "b"], "answer": 0},
        {"prompt": [{"role": "user", "content": "Name the largest ocean on Earth."}]},
        {"messages": [{"role": "assistant", "content": "Name every continent on Earth."}]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    questions = HeldOutQuestions()
    questions.add_file(path)
    assert questions.match(mcqa("which planet is largest?")) == "extra.jsonl"
    assert questions.match(sft("Quiz: name the largest ocean on Earth.")) == "extra.jsonl"
    assert questions.match(sft("Name every continent on Earth.")) is None


def test_dedup_key_ignores_whitespace_case_and_option_order():
    assert dedup_key(sft("What  is DNA?", "A molecule.")) == dedup_key(
        sft("what is dna?", "a molecule.")
    )
    a = MCQARecord(id="a", source="t", question="Q", choices=["x", "y"], answer=0)
    b = MCQARecord(id="b", source="t", question="q", choices=["y", "x"], answer=1)
    assert dedup_key(a) == dedup_key(b)


def test_system_prompt_is_added_once():
    turns = [Message(role="user", content="hi")]
    assert [m.role for m in with_system(turns, "Be a tutor.")] == ["system", "user"]
    already = [Message(role="system", content="own"), *turns]
    assert with_system(already, "Be a tutor.")[0].content == "own"


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def test_max_tokens_counts_through_the_chat_template_and_drops(tokenizer):
    record = sft("Explain gravity.", "Gravity pulls masses together. " * 40)
    rule = LengthRule(tokenizer, 60, "drop")
    assert rule.count(record.messages) > 60
    with pytest.raises(Skip, match="max_tokens"):
        rule.apply(record)
    short = sft("Hi?", "Hello.")
    assert rule.apply(short) == (short, False)
    assert rule.count(short.messages) == len(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
            tokenize=True,
        )["input_ids"]
    )


def test_truncate_cuts_the_reply_to_fit(tokenizer):
    record = sft("Explain gravity.", "Gravity pulls masses together. " * 40)
    rule = LengthRule(tokenizer, 60, "truncate")
    cut, was_cut = rule.apply(record)
    assert was_cut and rule.count(cut.messages) <= 60
    assert record.messages[-1].content.startswith(cut.messages[-1].content)
    long_prompt = sft("Why? " * 80, "Because.")
    with pytest.raises(Skip, match="max_tokens"):
        rule.apply(long_prompt)


def test_a_pair_is_as_long_as_its_longer_side(tokenizer):
    pair = PreferenceRecord(
        id="p",
        source="t",
        prompt=[Message(role="user", content="Q?")],
        chosen=[Message(role="assistant", content="Short.")],
        rejected=[Message(role="assistant", content="Long reply. " * 60)],
    )
    with pytest.raises(Skip):
        LengthRule(tokenizer, 60, "drop").apply(pair)
    cut, was_cut = LengthRule(tokenizer, 60, "truncate").apply(pair)
    assert was_cut and cut.chosen[0].content == "Short."
