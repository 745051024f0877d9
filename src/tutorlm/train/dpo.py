"""``tutorlm train dpo``: preference tuning (DPO, cDPO, rDPO, IPO, hinge) into M2.

Starts from M1 (``<run_dir>/sft/merged``) or from M0 (``train.dpo_start: m0``,
as ZEPHYR also does), trains a new LoRA adapter on
``<run_dir>/data/prefs.train.jsonl`` with the loss of ``train.loss``, and writes
``<run_dir>/dpo/merged`` = M2. The reference model is the starting model
itself, with the adapter disabled: one copy of the weights in memory.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from tutorlm.models import resolve_model
from tutorlm.recipe import Recipe
from tutorlm.train.runtime import TrainError
from tutorlm.train.stage import StageResult

logger = logging.getLogger("tutorlm.train")


def starting_model(recipe: Recipe) -> Path:
    """M1 (the merged SFT model) or M0, as ``train.dpo_start`` says.

    Raises:
        TrainError: M1 asked for but SFT has not produced it.
    """
    if recipe.train.dpo_start == "m0":
        return resolve_model(recipe.model)
    merged = recipe.run_dir / "sft" / "merged"
    if not (merged / "config.json").is_file():
        raise TrainError(
            f"{merged}: no SFT model (M1) to start DPO from. Run `tutorlm train sft` first, "
            "or set train.dpo_start=m0 to start from the base model."
        )
    return merged


def precompute_reference_logps(model, dataset, collator, *, batch_size: int, bf16: bool):
    """Add ``ref_chosen_logps`` / ``ref_rejected_logps`` columns, scored once by ``model``.

    Called before the adapter exists, so ``model`` is the reference itself. Rows
    are scored in length order (little padding) and written back in their order.
    """
    import torch

    order = sorted(range(len(dataset)), key=lambda i: dataset[i]["length"])
    chosen, rejected = [0.0] * len(dataset), [0.0] * len(dataset)
    device = model.device.type
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.eval()
    with torch.inference_mode(), autocast:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = collator([dataset[i] for i in indices])
            scored = model(
                input_ids=batch["input_ids"].to(model.device),
                attention_mask=batch["attention_mask"].to(model.device),
                score_mask=batch["completion_mask"].to(model.device),
            )
            sums, _ = scored.per_sequence()
            first, second = sums.float().cpu().chunk(2)
            for index, c, r in zip(indices, first.tolist(), second.tolist(), strict=True):
                chosen[index], rejected[index] = c, r
    model.train()
    return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)


def train_dpo(recipe: Recipe, *, resume: bool = False, callbacks=()) -> StageResult:
    """Run the DPO stage of a recipe and return what it produced.

    Args:
        recipe: the loaded recipe; ``train.dpo_start`` picks M1 or M0.
        resume: continue from the newest complete checkpoint in ``<run_dir>/dpo``.
        callbacks: extra transformers ``TrainerCallback`` objects.

    Raises:
        TrainError: no M1 to start from, a missing data file, a bad ``train.dpo``
            key, or QLoRA where it cannot run.
    """
    from accelerate import PartialState

    from tutorlm.train import data, modeling, stage
    from tutorlm.train.runtime import apply_threads
    from tutorlm.train.trainers import TutorDPOTrainer
    from tutorlm.train.trl_args import build_args

    cfg = recipe.train
    output_dir = recipe.run_dir / "dpo"
    threads = apply_threads(cfg.threads)
    base_path = starting_model(recipe)
    train_file = stage.data_file(recipe, cfg.prefs_train_file, "prefs.train.jsonl", required=True)
    val_file = stage.data_file(recipe, cfg.prefs_val_file, "prefs.val.jsonl", required=False)
    args = build_args("dpo", cfg, recipe.seed, output_dir, has_eval=val_file is not None)
    stage.drop_periodic_eval(args, val_file)
    model, tokenizer = modeling.load_for_training(
        base_path, bf16=args.bf16, qlora=cfg.qlora, chat_template=recipe.chat_template
    )

    main = PartialState().is_main_process
    train_set, prepared = data.load_split(
        "preference", train_file, tokenizer, args.max_length, warn=main
    )
    val_set = None
    if val_file is not None:
        val_set, _ = data.load_split("preference", val_file, tokenizer, args.max_length, warn=main)
    collator = data.PreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    if cfg.precompute_ref_logps:
        batch = args.precompute_ref_batch_size or args.per_device_train_batch_size
        train_set = precompute_reference_logps(
            model, train_set, collator, batch_size=batch, bf16=args.bf16
        )
        if val_set is not None:
            val_set = precompute_reference_logps(
                model, val_set, collator, batch_size=batch, bf16=args.bf16
            )
    files = [train_file] + ([val_file] if val_file is not None else [])
    fingerprint = stage.fingerprint(recipe, "dpo", base_path, files)
    checkpoint = (
        stage.start_output_dir(output_dir, resume=resume, fingerprint=fingerprint) if main else None
    )
    PartialState().wait_for_everyone()
    if not main and resume:
        checkpoint = stage.resume_point(output_dir, fingerprint)

    info = {
        "train_file": str(train_file),
        "loss": cfg.loss,
        "beta": cfg.beta,
        "eps": cfg.eps,
        "start": cfg.dpo_start,
        "split_pairs": cfg.dpo_split_pairs,
        "rows_read": prepared.read,
        "rows_used": len(prepared.rows),
        "rows_skipped": dict(prepared.skipped),
        "rows_truncated": prepared.truncated,
        "bf16": args.bf16,
        "threads": threads,
        "processes": PartialState().num_processes,
        "resumed_from_step": int(checkpoint.name.split("-")[1]) if checkpoint else None,
    }
    found, metrics = stage.callbacks(
        output_dir,
        model.generation_config,
        {"stage": "dpo", "base_model": str(base_path), "fingerprint": fingerprint},
        main_process=main,
    )
    trainer = TutorDPOTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.dpo_lora or cfg.lora),
        callbacks=[*found, *callbacks],
        loss_name=cfg.loss,
        eps=cfg.eps,
        split_pairs=cfg.dpo_split_pairs,
    )
    if main:
        logger.info(
            "train dpo (%s, beta %s): %s, %d pairs, bf16=%s, %d threads -> %s",
            cfg.loss,
            cfg.beta,
            base_path,
            len(train_set),
            args.bf16,
            threads,
            output_dir,
        )
    del model  # the trainer holds it; finish() releases it before the export
    stage.train(trainer, checkpoint)
    if val_set is not None:
        trainer.evaluate()
    return stage.finish(
        trainer, stage="dpo", base_path=base_path, tokenizer=tokenizer, metrics=metrics, info=info
    )


def run_dpo(recipe: Recipe, *, resume: bool = False) -> Path:
    """Run the DPO stage; returns ``<run_dir>/dpo`` (M2 is in its ``merged/``)."""
    return train_dpo(recipe, resume=resume).output_dir
