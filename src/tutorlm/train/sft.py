"""``tutorlm train sft``: LoRA supervised fine-tuning of M0 into M1.

Reads the run's ``data/sft.train.jsonl`` (and ``sft.val.jsonl`` when present, or
the files ``train.sft_train_file`` / ``train.sft_val_file`` name), trains a LoRA
adapter on the assistant turns, and writes ``<run_dir>/sft/merged`` = M1, the
model DPO starts from.
"""

from __future__ import annotations

from pathlib import Path

from tutorlm.models import resolve_model
from tutorlm.recipe import Recipe
from tutorlm.train.runner import StageSpec, run_stage
from tutorlm.train.stage import StageResult

SFT = StageSpec(
    name="sft",
    records="sft",
    train_file="sft.train.jsonl",
    val_file="sft.val.jsonl",
    start=lambda recipe: resolve_model(recipe.model),
    lora=lambda cfg: cfg.lora,
    collator="SFTCollator",
    trainer="TutorSFTTrainer",
)
"""The SFT stage: the recipe's model, its SFT records, ``train.lora``."""


def train_sft(recipe: Recipe, *, resume: bool = False, callbacks=()) -> StageResult:
    """Run the SFT stage of a recipe (see :func:`tutorlm.train.runner.run_stage`)."""
    return run_stage(SFT, recipe, resume=resume, callbacks=callbacks)


def run_sft(recipe: Recipe, *, resume: bool = False) -> Path:
    """Run the SFT stage; returns ``<run_dir>/sft`` (M1 is in its ``merged/``)."""
    return train_sft(recipe, resume=resume).output_dir
