"""Five held-out questions answered by M0 and by M2, for the report's side-by-side table.

The answers are decoded as the recipe's ``generation.samples`` says: greedy and 160
tokens unless a recipe states its report's sampling (ProbLLMs' appendix C: top-k 50,
top-p 1.0, up to 1,024 tokens), on the engine of its ``generation`` block.
"""

from __future__ import annotations

import json
from pathlib import Path

from tutorlm.data.formats import atomic_write_text, read_records
from tutorlm.recipe import Recipe

N_SAMPLES = 5


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
    """Answer the sample questions with each labelled model; write ``samples.json``."""
    import gc

    from tutorlm.bulk import open_generator

    prompts = sample_questions(recipe)
    sampling = recipe.generation.samples
    if sampling.seed is None:
        sampling = sampling.model_copy(update={"seed": recipe.seed})
    answers: dict[str, list[str]] = {}
    for label in labels:
        generator = open_generator(
            recipe.layout.model(label),
            device=recipe.device,
            config=recipe.generation,
            # trained checkpoints carry their template; the base may not
            chat_template=recipe.chat_template if label == "M0" else None,
            seed=recipe.seed,
            progress=False,
        )
        answers[label] = [
            out.text.strip()
            for out in generator.generate(prompts, sampling, desc=f"samples {label}")
        ]
        del generator  # one model in memory at a time
        gc.collect()
    rows = [
        {"question": prompt[-1]["content"], **{label: answers[label][i] for label in labels}}
        for i, prompt in enumerate(prompts)
    ]
    out = recipe.layout.samples
    atomic_write_text(out, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return out
