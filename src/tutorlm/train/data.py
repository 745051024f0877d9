"""Records to token ids, once: the SFT and preference datasets of the trainers.

The data stage writes records (``tutorlm.data.formats``); this module turns them
into token ids through the model's own chat template, so training sees exactly
the text that serving will render. Rows a trainer cannot use are counted and
skipped with one warning line (never a crash mid-epoch): rows that fail the
record schema, pairs whose chosen and rejected replies are identical, replies
that are empty once rendered, and prompts that leave no room for a reply within
``max_length``.

Batches are padded on the right to the longest sequence of the batch, and the
trainers draw length-grouped batches, so padding stays a few percent.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tutorlm.data.formats import read_records
from tutorlm.logprobs import common_prefix_length, render_ids, reply_batch, right_pad, split_pair

logger = logging.getLogger(__name__)

IGNORE = -100
"""Label of a token that carries no loss (PyTorch's cross-entropy convention)."""

PROMPT_TOO_LONG = "prompt longer than max_length"
SAME_REPLIES = "chosen == rejected"
EMPTY_REPLY = "empty completion"


@dataclass
class Prepared:
    """Tokenized rows and what was skipped on the way.

    Attributes:
        rows: one dict of token-id lists per usable record.
        read: records read from the file (good and bad).
        skipped: skipped rows by reason.
        truncated: rows kept but cut to ``max_length``.
    """

    rows: list[dict] = field(default_factory=list)
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0

    def summary(self, path: Path | str, max_length: int | None) -> str | None:
        """The one warning line about skipped and truncated rows, or ``None`` if all is well."""
        if not self.skipped and not self.truncated:
            return None
        reasons = ", ".join(f"{reason} x{count}" for reason, count in self.skipped.most_common())
        parts = [f"{path}: skipped {sum(self.skipped.values())} of {self.read} rows"]
        if reasons:
            parts[0] += f" ({reasons})"
        if self.truncated:
            parts.append(f"truncated {self.truncated} to max_length={max_length}")
        return "; ".join(parts)


def tokenize_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Ids of a whole conversation and labels that keep only the assistant turns.

    Each assistant turn starts where the render of the conversation up to it
    (with the generation prompt) stops matching the full render, and ends where
    the render including it ends; the end-of-turn token is inside, so the model
    learns to stop. This works for any chat template, with no ``{% generation %}``
    markers needed.
    """
    full = render_ids(tokenizer, messages)
    labels = [IGNORE] * len(full)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = (
            render_ids(tokenizer, messages[:index], add_generation_prompt=True) if index else []
        )
        through = render_ids(tokenizer, messages[: index + 1])
        start = common_prefix_length(before, full)
        end = common_prefix_length(through, full)
        labels[start:end] = full[start:end]
    return full, labels


def prepare_sft(path: Path | str, tokenizer, max_length: int | None) -> Prepared:
    """SFT records of a file as ``input_ids`` / ``labels`` / ``length`` rows."""
    result = read_records(path, "sft", strict=False)
    prepared = Prepared(read=len(result.records) + result.n_bad, skipped=Counter(result.bad))
    for record in result.records:
        messages = [m.model_dump() for m in record.messages]
        input_ids, labels = tokenize_conversation(tokenizer, messages)
        if max_length is not None and len(input_ids) > max_length:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            prepared.truncated += 1
        if all(label == IGNORE for label in labels[1:]):
            prepared.skipped[PROMPT_TOO_LONG if max_length else EMPTY_REPLY] += 1
            continue
        prepared.rows.append({"input_ids": input_ids, "labels": labels, "length": len(input_ids)})
    return prepared


def prepare_preferences(path: Path | str, tokenizer, max_length: int | None) -> Prepared:
    """Preference records of a file as ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` rows.

    Replies are cut so that prompt + reply fits ``max_length`` (the prompt is kept
    whole: it is what the reply answers).
    """
    result = read_records(path, "preference", strict=False)
    prepared = Prepared(read=len(result.records) + result.n_bad, skipped=Counter(result.bad))
    for record in result.records:
        prompt = [m.model_dump() for m in record.prompt]
        chosen = [m.model_dump() for m in record.chosen]
        rejected = [m.model_dump() for m in record.rejected]
        if chosen == rejected:
            prepared.skipped[SAME_REPLIES] += 1
            continue
        prompt_ids, chosen_ids, rejected_ids = split_pair(tokenizer, prompt, chosen, rejected)
        if not chosen_ids or not rejected_ids:
            prepared.skipped[EMPTY_REPLY] += 1
            continue
        if max_length is not None:
            room = max_length - len(prompt_ids)
            if room <= 0:
                prepared.skipped[PROMPT_TOO_LONG] += 1
                continue
            if len(chosen_ids) > room or len(rejected_ids) > room:
                prepared.truncated += 1
                chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
        if chosen_ids == rejected_ids:
            prepared.skipped[SAME_REPLIES] += 1
            continue
        prepared.rows.append(
            {
                "prompt_ids": prompt_ids,
                "chosen_ids": chosen_ids,
                "rejected_ids": rejected_ids,
                "length": len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)),
            }
        )
    return prepared


def load_split(
    kind: str, path: Path | str, tokenizer, max_length: int | None, *, warn: bool = True
):
    """A ``datasets.Dataset`` of one file, with the one warning line about bad rows.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no usable row is left.
    """
    from datasets import Dataset

    prepare = prepare_sft if kind == "sft" else prepare_preferences
    prepared = prepare(path, tokenizer, max_length)
    line = prepared.summary(path, max_length)
    if line and warn:
        logger.warning(line)
    if not prepared.rows:
        raise ValueError(f"{path}: no usable {kind} rows ({line or 'the file is empty'})")
    return Dataset.from_list(prepared.rows), prepared


@dataclass
class SFTCollator:
    """Right-pads ``input_ids`` / ``labels`` to the batch's longest row.

    ``shift_labels`` are the labels of the next-token predictions; transformers
    counts the loss's tokens (``num_items_in_batch``) from them.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        input_ids = right_pad([e["input_ids"] for e in examples], self.pad_token_id)
        attention_mask = right_pad([[1] * len(e["input_ids"]) for e in examples], 0)
        labels = right_pad([e["labels"] for e in examples], IGNORE)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "shift_labels": labels[:, 1:],  # what each position predicts: (B, T-1)
        }


@dataclass
class PreferenceCollator:
    """Stacks the chosen sequences of a batch, then the rejected ones, right-padded.

    Returns ``input_ids`` / ``attention_mask`` / ``completion_mask`` of shape
    ``(2B, T)`` (rows ``0..B-1`` chosen, ``B..2B-1`` rejected), and the
    precomputed reference log-probs when the rows carry them.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        rows = [
            (e["prompt_ids"], e[side]) for side in ("chosen_ids", "rejected_ids") for e in examples
        ]
        batch = reply_batch(rows, self.pad_token_id)
        if "ref_chosen_logps" in examples[0]:
            batch["ref_chosen_logps"] = torch.tensor([e["ref_chosen_logps"] for e in examples])
            batch["ref_rejected_logps"] = torch.tensor([e["ref_rejected_logps"] for e in examples])
        return batch
