"""One training stage, SFT or DPO: the steps in order, with only what differs in a spec.

Both stages read their records, load the model they start from, tokenize, find
their place (a fresh start or a checkpoint with the same fingerprint), train a
LoRA adapter and export the merged model. A :class:`StageSpec` holds what differs:
the record kind and files, the model it starts from, the adapter, the collator,
the trainer and its extra settings, and an optional step before training (DPO's
precomputed reference log-probs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tutorlm.recipe import Recipe
from tutorlm.train.config import LoraSettings, TrainConfig
from tutorlm.train.stage import StageResult

logger = logging.getLogger("tutorlm.train")


@dataclass(frozen=True)
class StageSpec:
    """What one training stage does differently from the other.

    Attributes:
        name: ``sft`` or ``dpo``: its contract, output folder and ``train.<name>`` section.
        records: the record kind of its data files (``sft`` or ``preference``).
        train_file: the training data file's name in the run layout.
        val_file: the optional validation file's name.
        start: the model it starts from (raises ``TrainError`` when missing).
        lora: the adapter it trains.
        collator: its collator class in ``tutorlm.train.data``.
        trainer: its trainer class in ``tutorlm.train.trainers`` (both imported when
            the stage runs: transformers is slow to import).
        trainer_options: extra keyword arguments of the trainer.
        info: settings written into ``train_summary.json``.
        before_training: turns ``(model, cfg, args, train_set, val_set, collator)`` into the
            datasets trained on (DPO adds precomputed reference log-probs), or None.
    """

    name: str
    records: str
    train_file: str
    val_file: str
    start: Callable[[Recipe], Path]
    lora: Callable[[TrainConfig], LoraSettings]
    collator: str
    trainer: str
    trainer_options: Callable[[TrainConfig], dict] = lambda cfg: {}
    info: Callable[[TrainConfig], dict] = lambda cfg: {}
    before_training: Callable | None = None


def run_stage(
    spec: StageSpec, recipe: Recipe, *, resume: bool = False, callbacks=()
) -> StageResult:
    """Run one training stage of a recipe and return what it produced.

    Args:
        spec: the stage (``tutorlm.train.sft.SFT`` or ``tutorlm.train.dpo.DPO``).
        recipe: the loaded recipe.
        resume: continue from the newest complete checkpoint of the stage with the
            same fingerprint instead of starting over.
        callbacks: extra transformers ``TrainerCallback`` objects (progress hooks of
            a caller, the benchmark's step timer).

    Raises:
        TrainError: no model to start from, a missing data file, a bad
            ``train.<stage>`` key, or QLoRA where it cannot run.
    """
    from accelerate import PartialState

    from tutorlm.hardware import apply_threads
    from tutorlm.train import data, modeling, stage, trainers
    from tutorlm.train.trl_args import build_args

    cfg, name = recipe.train, spec.name
    output_dir = recipe.layout.stage_dir(name)
    threads = apply_threads(cfg.threads)
    base_path = spec.start(recipe)
    train_file = stage.data_file(recipe, spec.train_file, required=True)
    val_file = stage.data_file(recipe, spec.val_file, required=False)
    args = build_args(
        name, cfg, recipe.seed, output_dir, has_eval=val_file is not None, device=recipe.device
    )
    stage.drop_periodic_eval(args, val_file)
    model, tokenizer = modeling.load_for_training(
        base_path,
        half=modeling.mixed_precision(args),
        qlora=cfg.qlora,
        chat_template=recipe.chat_template,
    )

    main = PartialState().is_main_process
    files = [path for path in (train_file, val_file) if path is not None]
    sets = [
        data.load_split(spec.records, path, tokenizer, args.max_length, warn=main) for path in files
    ]
    prepared = sets[0][1]
    train_set, val_set = sets[0][0], sets[1][0] if len(sets) > 1 else None
    collator = getattr(data, spec.collator)(pad_token_id=tokenizer.pad_token_id)
    if spec.before_training is not None:
        train_set, val_set = spec.before_training(model, cfg, args, train_set, val_set, collator)
    fingerprint = stage.fingerprint(recipe, name, base_path, files)
    checkpoint = (
        stage.start_output_dir(recipe, name, resume=resume, fingerprint=fingerprint)
        if main
        else None
    )
    PartialState().wait_for_everyone()
    if not main and resume:
        checkpoint = stage.resume_point(output_dir, fingerprint)

    info = {
        "train_file": str(train_file),
        **spec.info(cfg),
        "rows_read": prepared.read,
        "rows_used": len(prepared.rows),
        "rows_skipped": dict(prepared.skipped),
        "rows_truncated": prepared.truncated,
        "bf16": args.bf16,
        "fp16": args.fp16,
        "threads": threads,
        "processes": PartialState().num_processes,
        "resumed_from_step": int(checkpoint.name.split("-")[1]) if checkpoint else None,
    }
    found, metrics = stage.callbacks(
        recipe,
        name,
        model.generation_config,
        {"stage": name, "base_model": str(base_path), "fingerprint": fingerprint},
        main_process=main,
    )
    trainer = getattr(trainers, spec.trainer)(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(spec.lora(cfg)),
        callbacks=[*found, *callbacks],
        **spec.trainer_options(cfg),
    )
    if main:
        logger.info(
            "train %s %s: %s, %d rows, bf16=%s, %d threads -> %s",
            name,
            spec.info(cfg),
            base_path,
            len(train_set),
            args.bf16,
            threads,
            output_dir,
        )
    del model  # the trainer holds it; finish() releases it before the export
    stage.train(trainer, checkpoint)
    if val_set is not None:
        stage.evaluate_at_end(trainer)
    return stage.finish(
        trainer,
        recipe,
        stage=name,
        base_path=base_path,
        tokenizer=tokenizer,
        metrics=metrics,
        info=info,
    )
