"""``tutorlm train sft``: LoRA supervised fine-tuning of M0 into M1.

Reads ``<run_dir>/data/sft.train.jsonl`` (and ``sft.val.jsonl`` when present),
trains a LoRA adapter on the assistant turns, and writes
``<run_dir>/sft/merged`` = M1, the model DPO starts from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tutorlm.models import resolve_model
from tutorlm.recipe import Recipe
from tutorlm.train.stage import StageResult

logger = logging.getLogger("tutorlm.train")


def train_sft(recipe: Recipe, *, resume: bool = False, callbacks=()) -> StageResult:
    """Run the SFT stage of a recipe and return what it produced.

    Args:
        recipe: the loaded recipe; its ``model`` is M0 and ``train`` the settings.
        resume: continue from the newest complete checkpoint in ``<run_dir>/sft``
            instead of starting over.
        callbacks: extra transformers ``TrainerCallback`` objects (progress
            hooks of a caller, the benchmark's step timer).

    Raises:
        TrainError: a missing data file, a bad ``train.sft`` key, or QLoRA where
            it cannot run.
    """
    from accelerate import PartialState

    from tutorlm.train import data, modeling, stage
    from tutorlm.train.runtime import apply_threads
    from tutorlm.train.trainers import TutorSFTTrainer
    from tutorlm.train.trl_args import build_args

    cfg = recipe.train
    output_dir = recipe.run_dir / "sft"
    threads = apply_threads(cfg.threads)
    train_file = stage.data_file(recipe, cfg.sft_train_file, "sft.train.jsonl", required=True)
    val_file = stage.data_file(recipe, cfg.sft_val_file, "sft.val.jsonl", required=False)
    args = build_args("sft", cfg, recipe.seed, output_dir, has_eval=val_file is not None)
    stage.drop_periodic_eval(args, val_file)
    base_path = resolve_model(recipe.model)
    model, tokenizer = modeling.load_for_training(
        base_path, bf16=args.bf16, qlora=cfg.qlora, chat_template=recipe.chat_template
    )

    main = PartialState().is_main_process
    train_set, prepared = data.load_split("sft", train_file, tokenizer, args.max_length, warn=main)
    val_set = None
    if val_file is not None:
        val_set, _ = data.load_split("sft", val_file, tokenizer, args.max_length, warn=main)
    files = [train_file] + ([val_file] if val_file is not None else [])
    fingerprint = stage.fingerprint(recipe, "sft", base_path, files)
    checkpoint = (
        stage.start_output_dir(output_dir, resume=resume, fingerprint=fingerprint) if main else None
    )
    PartialState().wait_for_everyone()
    if not main and resume:
        checkpoint = stage.resume_point(output_dir, fingerprint)

    info = {
        "train_file": str(train_file),
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
        {"stage": "sft", "base_model": str(base_path), "fingerprint": fingerprint},
        main_process=main,
    )
    trainer = TutorSFTTrainer(
        model=model,
        args=args,
        data_collator=data.SFTCollator(pad_token_id=tokenizer.pad_token_id),
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.lora),
        callbacks=[*found, *callbacks],
    )
    if main:
        logger.info(
            "train sft: %s, %d rows, bf16=%s, %d threads -> %s",
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
        trainer, stage="sft", base_path=base_path, tokenizer=tokenizer, metrics=metrics, info=info
    )


def run_sft(recipe: Recipe, *, resume: bool = False) -> Path:
    """Run the SFT stage; returns ``<run_dir>/sft`` (M1 is in its ``merged/``)."""
    return train_sft(recipe, resume=resume).output_dir
