"""Shared helpers of the training tests: fixture records and a tiny recipe.

No tests live here; the other ``test_train*`` modules import these. The records
follow ``tutorlm.data.formats`` so the trainers read them as they would read
the data stage's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

QUESTIONS = [
    ("What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 6."),
    ("What is 7 times 6?", "7 times 6 is 42.", "7 times 6 is 36."),
    ("What is the derivative of x^2?", "The derivative of x^2 is 2x.", "It is x."),
    ("Solve x + 4 = 10.", "Subtract 4: x = 6.", "x = 14."),
    ("What is 9 squared?", "9 squared is 81.", "9 squared is 18."),
    ("What is the unit of force?", "The newton (N).", "The joule (J)."),
    ("What is 15 / 3?", "15 / 3 = 5.", "15 / 3 = 3."),
    ("Is 17 prime?", "Yes, 17 is prime.", "No, 17 = 3 x 6."),
]


def sft_records(n: int = 8) -> list[dict]:
    """``n`` single-turn SFT records cycling through the fixture questions."""
    rows = []
    for i in range(n):
        question, answer, _ = QUESTIONS[i % len(QUESTIONS)]
        rows.append(
            {
                "id": f"sft-{i}",
                "source": "fixture",
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return rows


def preference_records(n: int = 8) -> list[dict]:
    """``n`` preference pairs: the right answer chosen, a wrong one rejected."""
    rows = []
    for i in range(n):
        question, good, bad = QUESTIONS[i % len(QUESTIONS)]
        rows.append(
            {
                "id": f"pair-{i}",
                "source": "fixture",
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
                "meta": {},
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_run_data(run_dir: Path, n_sft: int = 8, n_pairs: int = 8) -> Path:
    """The data stage's files under ``run_dir/data`` (train splits only)."""
    write_jsonl(run_dir / "data" / "sft.train.jsonl", sft_records(n_sft))
    write_jsonl(run_dir / "data" / "prefs.train.jsonl", preference_records(n_pairs))
    return run_dir / "data"


def tiny_recipe_dict(model_dir: Path, run_root: Path, chat_template=None, **train) -> dict:
    """A recipe for the tiny model: a few fast steps, checkpoints every step."""
    common = {
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "logging_steps": 1,
        "save_steps": 1,
        "max_length": 128,
        "learning_rate": 1e-2,
        "warmup_steps": 0,
        "bf16": False,
        "disable_tqdm": True,
    }
    section = {
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "threads": 1,
        "sft": dict(common),
        "dpo": dict(common),
    }
    for key, value in train.items():
        if key in ("sft", "dpo"):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    recipe = {"name": "tiny", "model": str(model_dir), "run_root": str(run_root), "train": section}
    if chat_template is not None:
        recipe["chat_template"] = chat_template
    return recipe


def load_tiny_recipe(model_dir: Path, run_root: Path, chat_template=None, **train):
    from tutorlm.recipe import recipe_from_dict

    return recipe_from_dict(tiny_recipe_dict(model_dir, run_root, chat_template, **train))


@pytest.fixture
def tiny_run(tiny_model_dir, tmp_path):
    """A recipe over the tiny model with fixture data already in its run directory."""
    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs")
    write_run_data(recipe.run_dir)
    return recipe
