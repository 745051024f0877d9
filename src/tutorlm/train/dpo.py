"""``tutorlm train dpo``: preference tuning (DPO, cDPO, rDPO, IPO, hinge) into M2.

Starts from M1 (``<run_dir>/sft/merged``) or from M0 (``train.dpo_start: m0``,
as ZEPHYR also does), trains a new LoRA adapter on the run's
``data/prefs.train.jsonl`` (or ``train.prefs_train_file``) with the loss of
``train.loss``, and writes ``<run_dir>/dpo/merged`` = M2. The reference model is
the starting model itself, with the adapter disabled: one copy of the weights in
memory.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tutorlm.models import resolve_model
from tutorlm.recipe import Recipe
from tutorlm.train import modeling
from tutorlm.train.runner import StageSpec, run_stage
from tutorlm.train.runtime import TrainError
from tutorlm.train.stage import StageResult


def starting_model(recipe: Recipe) -> Path:
    """M1 (the merged SFT model) or M0, as ``train.dpo_start`` says.

    Raises:
        TrainError: M1 asked for but SFT has not produced it.
    """
    if recipe.train.dpo_start == "m0":
        return resolve_model(recipe.model)
    merged = recipe.layout.merged("sft")
    if not (merged / "config.json").is_file():
        raise TrainError(
            f"{merged}: no SFT model (M1) to start DPO from. Run `tutorlm train sft` first, "
            "or set train.dpo_start=m0 to start from the base model."
        )
    return merged


def precompute_reference_logps(model, dataset, *, pad_token_id: int, batch_size: int, half=None):
    """Add ``ref_chosen_logps`` / ``ref_rejected_logps`` columns, scored once by ``model``.

    Called before the adapter exists, so ``model`` is the reference itself; ``half``
    is the run's mixed-precision dtype (None: fp32), as the training steps use it.
    """
    import torch

    from tutorlm.logprobs import reply_logps

    rows = [dataset[i] for i in range(len(dataset))]
    pairs = [
        (row["prompt_ids"], row[side]) for side in ("chosen_ids", "rejected_ids") for row in rows
    ]
    device = next(model.parameters()).device.type
    autocast = torch.autocast(device, dtype=half) if half else contextlib.nullcontext()
    model.eval()
    with autocast:
        sums = reply_logps(model, pairs, pad_token_id=pad_token_id, batch_size=batch_size)
    model.train()
    chosen, rejected = sums[: len(rows)], sums[len(rows) :]
    return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)


def _with_reference(model, cfg, args, train_set, val_set, collator):
    """DPO's step before training: reference log-probs, when the recipe precomputes them."""
    if not cfg.precompute_ref_logps:
        return train_set, val_set
    batch = args.precompute_ref_batch_size or args.per_device_train_batch_size
    half = modeling.mixed_precision(args)
    options = {"pad_token_id": collator.pad_token_id, "batch_size": batch, "half": half}
    train_set = precompute_reference_logps(model, train_set, **options)
    if val_set is not None:
        val_set = precompute_reference_logps(model, val_set, **options)
    return train_set, val_set


DPO = StageSpec(
    name="dpo",
    records="preference",
    train_file="prefs.train.jsonl",
    val_file="prefs.val.jsonl",
    start=starting_model,
    lora=lambda cfg: cfg.dpo_lora or cfg.lora,
    collator="PreferenceCollator",
    trainer="TutorDPOTrainer",
    trainer_options=lambda cfg: {
        "loss_name": cfg.loss,
        "eps": cfg.eps,
        "split_pairs": cfg.dpo_split_pairs,
    },
    info=lambda cfg: {
        "loss": cfg.loss,
        "beta": cfg.beta,
        "eps": cfg.eps,
        "start": cfg.dpo_start,
        "split_pairs": cfg.dpo_split_pairs,
    },
    before_training=_with_reference,
)
"""The DPO stage: M1 or M0, preference pairs, ``train.loss`` / ``beta`` / ``eps``."""


def train_dpo(recipe: Recipe, *, resume: bool = False, callbacks=()) -> StageResult:
    """Run the DPO stage of a recipe (see :func:`tutorlm.train.runner.run_stage`)."""
    return run_stage(DPO, recipe, resume=resume, callbacks=callbacks)


def run_dpo(recipe: Recipe, *, resume: bool = False) -> Path:
    """Run the DPO stage; returns ``<run_dir>/dpo`` (M2 is in its ``merged/``)."""
    return train_dpo(recipe, resume=resume).output_dir
