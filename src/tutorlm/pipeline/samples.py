"""Five held-out questions answered by M0 and by M2, for the report's side-by-side table."""

from __future__ import annotations

import json
from pathlib import Path

from tutorlm.data.formats import atomic_write_text, read_records
from tutorlm.recipe import Recipe

N_SAMPLES = 5
MAX_NEW_TOKENS = 160


def sample_questions(recipe: Recipe, n: int = N_SAMPLES) -> list[list[dict]]:
    """The prompts (messages before the reference answer) of the first ``n`` held-out
    SFT conversations; they were never trained on. A recipe without SFT data (ProbLLMs
    trains DPO alone) takes the prompts of its held-out preference pairs instead."""
    layout = recipe.layout
    path = layout.data("sft.val.jsonl")
    if not path.is_file():
        for name in ("prefs.test.jsonl", "prefs.val.jsonl"):
            if layout.data(name).is_file():
                records = read_records(layout.data(name), "preference", strict=False).records[:n]
                return [[m.model_dump() for m in record.prompt] for record in records]
        return []
    records = read_records(path, "sft", strict=False).records[:n]
    prompts = []
    for record in records:
        messages = [m.model_dump() for m in record.messages]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(messages[:last])
    return prompts


def answer_samples(recipe: Recipe, labels=("M0", "M2")) -> Path:
    """Generate greedy answers of each labelled model; write ``samples.json``."""
    from tutorlm.generation import chat
    from tutorlm.models import load_model
    from tutorlm.templates import apply_template

    prompts = sample_questions(recipe)
    answers: dict[str, list[str]] = {}
    for label in labels:
        model, tokenizer = load_model(recipe.layout.model(label))
        if label == "M0":  # trained checkpoints carry their template; the base may not
            apply_template(tokenizer, recipe.chat_template)
        answers[label] = [
            chat(model, tokenizer, prompt, max_new_tokens=MAX_NEW_TOKENS).strip()
            for prompt in prompts
        ]
        del model
    rows = [
        {"question": prompt[-1]["content"], **{label: answers[label][i] for label in labels}}
        for i, prompt in enumerate(prompts)
    ]
    out = recipe.layout.samples
    atomic_write_text(out, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return out
