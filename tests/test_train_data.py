"""Records to token ids: assistant-only labels, bad rows counted and skipped, collation."""

from __future__ import annotations

import logging

import pytest
from train_support import preference_records, sft_records, write_jsonl

from tutorlm.logprobs import split_pair
from tutorlm.train.data import (
    IGNORE,
    PreferenceCollator,
    SFTCollator,
    load_split,
    prepare_preferences,
    prepare_sft,
    tokenize_conversation,
)


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def labelled_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE])


def test_labels_cover_every_assistant_turn_and_its_end_token(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "Six."},
    ]
    input_ids, labels = tokenize_conversation(tokenizer, messages)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(input_ids) == rendered
    assert labelled_text(tokenizer, labels) == "Four.<|im_end|>\nSix.<|im_end|>\n"
    assert len(labels) == len(input_ids)


def test_pair_tokens_split_at_the_assistant_reply(tokenizer):
    record = preference_records(1)[0]
    prompt_ids, chosen_ids, rejected_ids = split_pair(
        tokenizer, record["prompt"], record["chosen"], record["rejected"]
    )
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(chosen_ids) == "2 + 3 = 5.<|im_end|>\n"
    assert tokenizer.decode(rejected_ids) == "2 + 3 = 6.<|im_end|>\n"


def test_bad_preference_rows_are_counted_and_skipped(tokenizer, tmp_path):
    rows = preference_records(4)
    same = dict(rows[0], id="same", rejected=rows[0]["chosen"])
    long_prompt = dict(rows[1], id="long", prompt=[{"role": "user", "content": "why " * 200}])
    no_chosen = {k: v for k, v in rows[2].items() if k != "chosen"}
    path = write_jsonl(tmp_path / "prefs.jsonl", [*rows, same, long_prompt, no_chosen])
    prepared = prepare_preferences(path, tokenizer, max_length=128)
    assert len(prepared.rows) == 4
    assert prepared.read == 7
    assert prepared.skipped == {
        "chosen == rejected": 1,
        "prompt longer than max_length": 1,
        "chosen: missing (required)": 1,
    }


def test_one_warning_line_names_file_and_counts(tokenizer, tmp_path, caplog):
    rows = preference_records(3)
    rows.append(dict(rows[0], id="same", rejected=rows[0]["chosen"]))
    rows.append(dict(rows[0], id="same2", rejected=rows[0]["chosen"]))
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="tutorlm.train.data"):
        dataset, _ = load_split("preference", path, tokenizer, 128)
    assert len(dataset) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: skipped 2 of 5 rows (chosen == rejected x2)"
    ]


def test_clean_file_gives_no_warning(tokenizer, tmp_path, caplog):
    path = write_jsonl(tmp_path / "sft.jsonl", sft_records(3))
    with caplog.at_level(logging.WARNING, logger="tutorlm.train.data"):
        dataset, _ = load_split("sft", path, tokenizer, 128)
    assert len(dataset) == 3 and caplog.records == []
    assert dataset.column_names == ["input_ids", "labels", "length"]


def test_long_replies_are_truncated_to_max_length_and_counted(tokenizer, tmp_path):
    rows = preference_records(2)
    rows[0]["chosen"] = [{"role": "assistant", "content": "five " * 100}]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    prepared = prepare_preferences(path, tokenizer, max_length=64)
    first = prepared.rows[0]
    assert len(first["prompt_ids"]) + len(first["chosen_ids"]) == 64
    assert prepared.truncated == 1 and not prepared.skipped
    assert (
        prepared.summary(path, 64) == f"{path}: skipped 0 of 2 rows; truncated 1 to max_length=64"
    )


def test_sft_prompt_filling_max_length_is_skipped(tokenizer, tmp_path):
    rows = sft_records(2)
    rows[1]["messages"][0]["content"] = "why " * 200
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    prepared = prepare_sft(path, tokenizer, max_length=64)
    assert len(prepared.rows) == 1
    assert prepared.skipped == {"prompt longer than max_length": 1}


def test_file_without_usable_rows_is_an_error(tokenizer, tmp_path):
    row = preference_records(1)[0]
    path = write_jsonl(tmp_path / "prefs.jsonl", [dict(row, rejected=row["chosen"])])
    with pytest.raises(ValueError, match="no usable preference rows"):
        load_split("preference", path, tokenizer, 128)


def test_sft_collator_pads_right_and_masks_padding():
    batch = SFTCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["shift_labels"].tolist() == [[6, 7], [-100, -100]]


def test_preference_collator_stacks_chosen_then_rejected():
    examples = [
        {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]},
        {"prompt_ids": [6], "chosen_ids": [7, 8], "rejected_ids": [9]},
    ]
    batch = PreferenceCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1],
        [0, 1, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [1, 1, 0, 0],
    ]
    assert "ref_chosen_logps" not in batch
