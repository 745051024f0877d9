"""The steps of a training stage: data files, fingerprint, output directory, callbacks, export."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tutorlm.contract import contract
from tutorlm.data.formats import atomic_write_text
from tutorlm.recipe import Recipe
from tutorlm.train.outputs import (
    CheckpointExtrasCallback,
    MetricsFileCallback,
    clear_previous_run,
    export_merged,
    resume_point,
    tensorboard_callback,
    trim_metrics,
)
from tutorlm.train.runtime import TrainError

logger = logging.getLogger("tutorlm.train")


@dataclass
class StageResult:
    """What a finished stage produced.

    Attributes:
        output_dir: ``<run_dir>/sft`` or ``<run_dir>/dpo``.
        merged_dir: the merged model (M1 or M2) that later stages load.
        adapter_dir: the LoRA adapter alone.
        global_step: optimizer steps done, resumed ones included.
        summary: the content of ``train_summary.json``.
        metrics_file: the training log, one JSON object a line.
    """

    output_dir: Path
    merged_dir: Path
    adapter_dir: Path
    global_step: int
    summary: dict = field(default_factory=dict)
    metrics_file: Path | None = None


def data_file(recipe: Recipe, name: str, *, required: bool) -> Path | None:
    """The run's data file ``name`` (``recipe.layout.data``: the built one, or the one the
    recipe points to); ``None`` if optional and absent, or optional and empty (a split
    whose sources are all missing, such as a test split made only of private pairs the
    run does not have).

    Raises:
        TrainError: a required file, or one the recipe names, is missing (with the
            command that makes it).
    """
    layout = recipe.layout
    path = layout.data(name)
    if path.is_file() and not required and path.stat().st_size == 0:
        logger.warning("%s is empty: training goes on without this validation set", path)
        return None
    if path.is_file():
        return path
    if required or name in layout.data_files:
        raise TrainError(
            f"{path}: no such data file. Build it with `tutorlm data build` "
            f"(or point train.{_key_for(name)} at your own file)."
        )
    return None


def drop_periodic_eval(args, val_file: Path | None) -> None:
    """Without a validation set, turn off ``eval_strategy`` (the recipe's periodic
    evaluation) with a warning, instead of failing in the trainer."""
    from transformers.trainer_utils import IntervalStrategy

    if val_file is None and args.eval_strategy != IntervalStrategy.NO:
        logger.warning("no validation set: eval_strategy '%s' turned off", args.eval_strategy)
        args.eval_strategy = IntervalStrategy.NO


def _key_for(default_name: str) -> str:
    return {
        "sft.train.jsonl": "sft_train_file",
        "sft.val.jsonl": "sft_val_file",
        "prefs.train.jsonl": "prefs_train_file",
        "prefs.val.jsonl": "prefs_val_file",
    }[default_name]


def fingerprint(recipe: Recipe, stage: str, base_path: Path, data_files: list[Path]) -> str:
    """sha256 of what a stage's checkpoints depend on: the recipe keys of its contract
    (``tutorlm.contract``), the base weights (names, sizes, times) and the data.

    A checkpoint resumes only a run with the same fingerprint, so changing a
    learning rate or rebuilding the data never continues an old run, while a
    change to the other stage's settings leaves this stage's checkpoints usable.
    """
    weights = sorted(
        (path.name, path.stat().st_size, path.stat().st_mtime_ns)
        for path in Path(base_path).glob("*.safetensors")
    )
    data = [hashlib.sha256(path.read_bytes()).hexdigest() for path in data_files]
    identity = {
        "stage": stage,
        "settings": contract(stage).settings(recipe.to_dict()),
        "base": [str(base_path), weights],
        "data": data,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def start_output_dir(
    recipe: Recipe, stage: str, *, resume: bool, fingerprint: str | None = None
) -> Path | None:
    """Make the stage's directory ready; returns the checkpoint to resume from, if any.

    Without ``resume`` an earlier run's checkpoints and metrics are removed, so
    that a fresh run never mixes with an old one. With it, metric lines written
    after the checkpoint (by the killed run) are dropped; checkpoints of a run
    with another ``fingerprint`` are not resumed from.
    """
    output_dir = recipe.layout.stage_dir(stage)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_previous_run(output_dir, recipe.layout.training_outputs(stage))
        return None
    checkpoint = resume_point(output_dir, fingerprint)
    if checkpoint is None:
        logger.warning(
            "%s: no complete checkpoint to resume from; starting from step 0", output_dir
        )
        clear_previous_run(output_dir, recipe.layout.training_outputs(stage))
        return None
    step = int(checkpoint.name.split("-")[1])
    trim_metrics(recipe.layout.metrics(stage), step)
    return checkpoint


def train(trainer, checkpoint: Path | None) -> None:
    """``trainer.train``, resuming from ``checkpoint``; a checkpoint that already
    reached ``max_steps`` is loaded, not trained further.

    transformers' loop runs at least one optimizer step after a resume, so
    resuming a finished run would otherwise end one step past ``max_steps``; the
    finished checkpoint's adapter weights and trainer state are read instead.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    if checkpoint is not None and trainer.args.max_steps > 0:
        state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        if state.global_step >= trainer.args.max_steps:
            logger.info("%s already reached max_steps: loading it, not training", checkpoint)
            weights = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
            set_peft_model_state_dict(trainer.accelerator.unwrap_model(trainer.model), weights)
            trainer.state = state
            return
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def evaluate_at_end(trainer) -> None:
    """Evaluate the trained model once, unless the recipe's cadence just did.

    With ``eval_strategy: steps`` the last periodic evaluation may fall on the
    last step; a second one would add an identical row to ``metrics.jsonl`` and
    a repeated point to the validation curves.
    """
    step = trainer.state.global_step
    done = any("eval_loss" in log and log.get("step") == step for log in trainer.state.log_history)
    if not done:
        trainer.evaluate()


def callbacks(
    recipe: Recipe, stage: str, generation_config, stage_info: dict, *, main_process: bool
):
    """Metrics file, TensorBoard events and checkpoint completion, for one stage."""
    metrics = MetricsFileCallback(recipe.layout.metrics(stage))
    extras = CheckpointExtrasCallback(generation_config, stage_info)
    found = [metrics, extras]
    if main_process:
        found.append(tensorboard_callback(recipe.layout.tensorboard(stage)))
    return found, metrics


def release_training_memory(trainer) -> None:
    """Drop the trained model and optimizer before the export loads a fresh base.

    Without this the export's fp32 copy would sit next to the training copy and
    set the run's peak memory.
    """
    import gc

    trainer.model = trainer.model_wrapped = None
    trainer.optimizer = trainer.lr_scheduler = None
    handler = trainer.callback_handler
    handler.model = handler.optimizer = handler.lr_scheduler = None
    trainer.accelerator.free_memory()
    gc.collect()
    _return_freed_memory_to_os()


def _return_freed_memory_to_os() -> None:
    """glibc keeps freed heap pages; ``malloc_trim`` hands them back (Linux only)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and hasattr(ctypes.CDLL(name), "malloc_trim"):
        ctypes.CDLL(name).malloc_trim(0)


def finish(
    trainer, recipe: Recipe, *, stage: str, base_path: Path, tokenizer, metrics, info: dict
) -> StageResult:
    """Save the adapter and the merged model, write the summary; main process only.

    Every process waits for the export, so that a pipeline step after
    ``accelerate launch`` finds the merged model complete.
    """
    output_dir, merged_dir = recipe.layout.stage_dir(stage), recipe.layout.merged(stage)
    adapter_dir = recipe.layout.adapter(stage)
    trainer.save_model(str(adapter_dir))  # every process: FSDP / DeepSpeed gather here
    release_training_memory(trainer)
    summary = {}
    if trainer.accelerator.is_main_process:
        started = time.perf_counter()
        export_merged(base_path, adapter_dir, tokenizer, merged_dir)
        summary = {
            "stage": stage,
            "base_model": str(base_path),
            "global_step": trainer.state.global_step,
            **metrics.summary,
            **info,
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write_text(recipe.layout.train_summary(stage), text)
        logger.info("%s: merged model in %s", stage, merged_dir)
    trainer.accelerator.wait_for_everyone()
    return StageResult(
        output_dir,
        merged_dir,
        adapter_dir,
        trainer.state.global_step,
        summary,
        recipe.layout.metrics(stage),
    )
