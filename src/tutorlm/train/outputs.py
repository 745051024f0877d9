"""What a training stage leaves on disk, and how a killed run finds its place again.

``<run_dir>/<stage>/``:

- ``checkpoint-N/``: adapter, optimizer, scheduler, RNG states, trainer state,
  tokenizer with chat template, generation config, and ``tutorlm-complete.json``
  written last, so a checkpoint cut short by a kill is never resumed from;
- ``adapter/``: the final LoRA adapter and tokenizer;
- ``merged/``: the base with the adapter merged in (safetensors, tokenizer,
  ``chat_template.jinja``, ``generation_config.json``): what evaluation,
  quantization and serving load;
- ``metrics.jsonl``: one line per logging step; ``tensorboard/``: the same as events;
- ``train_summary.json``: steps, loss, time, rows used and skipped.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from tutorlm.data.formats import atomic_write_text, follow_umask

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "tutorlm-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: Path) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` of every checkpoint directory, oldest first."""
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            match = _CHECKPOINT.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path, (path / COMPLETE_MARKER).is_file()))
    return sorted(found)


def checkpoint_fingerprint(path: Path) -> str | None:
    """The settings-and-data fingerprint a complete checkpoint was made with."""
    try:
        return json.loads((path / COMPLETE_MARKER).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def resume_point(output_dir: Path, fingerprint: str | None = None) -> Path | None:
    """The newest complete checkpoint; incomplete ones (cut by a kill) are removed.

    With ``fingerprint``, a newest checkpoint made with other settings or data
    is no place to resume from: ``None`` is returned, and the caller starts afresh.
    """
    latest = None
    for _step, path, complete in checkpoints(output_dir):
        if complete:
            latest = path
        else:
            logger.warning(
                "removing incomplete checkpoint %s (the run was killed while saving)", path
            )
            shutil.rmtree(path, ignore_errors=True)
    if (
        latest is not None
        and fingerprint is not None
        and checkpoint_fingerprint(latest) != fingerprint
    ):
        logger.warning(
            "%s was made with other training settings, base model or data: not resuming from it",
            latest,
        )
        return None
    return latest


def clear_previous_run(output_dir: Path, outputs: Sequence[Path]) -> None:
    """Remove an earlier run's checkpoints and ``outputs`` (metrics, models: the run
    layout's ``training_outputs``) before starting afresh.

    A fresh run that fails must not leave the previous run's merged model behind
    for the next stage to pick up as if it were this run's.
    """
    for _step, path, _complete in checkpoints(output_dir):
        shutil.rmtree(path, ignore_errors=True)
    for target in outputs:
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after ``last_step`` (by a run killed after its checkpoint)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsFileCallback(TrainerCallback):
    """Writes each log of the trainer as one JSON line, with tokens/s added.

    Training lines carry ``loss``, ``learning_rate``, ``grad_norm``,
    ``tokens_per_second`` and ``seconds_per_step`` (and for DPO the rewards);
    evaluation lines carry ``split: "eval"`` and the ``eval_`` metrics.
    """

    def __init__(self, path: Path):
        self.path = path
        self.summary: dict = {}
        self._last: tuple[float, int, float] | None = None  # (time, step, tokens)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.global_step, None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            self.summary = dict(logs)
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if any(key.startswith("eval_") for key in logs):
            record["split"] = "eval"
        record.update(logs)
        now, tokens = time.perf_counter(), logs.get("num_tokens")
        if self._last is not None and "loss" in logs:
            then, step, tokens_then = self._last
            if state.global_step > step:
                record["seconds_per_step"] = round((now - then) / (state.global_step - step), 4)
            if tokens is not None and tokens_then is not None and now > then:
                record["tokens_per_second"] = round((tokens - tokens_then) / (now - then), 2)
        if "loss" in logs:
            self._last = (now, state.global_step, tokens)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


class CheckpointExtrasCallback(TrainerCallback):
    """Completes each checkpoint: generation config, stage info, then the marker.

    The trainer already saves the adapter and the tokenizer (with its chat
    template); the marker written last tells resume that the checkpoint is whole.
    """

    def __init__(self, generation_config, stage_info: dict):
        self.generation_config = generation_config
        self.stage_info = stage_info

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        if self.generation_config is not None:
            self.generation_config.save_pretrained(folder)
        marker = {**self.stage_info, "step": state.global_step}
        atomic_write_text(folder / COMPLETE_MARKER, json.dumps(marker, indent=2) + "\n")


def tensorboard_callback(log_dir: Path):
    """transformers' TensorBoard callback, writing under ``log_dir``."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def export_merged(base_path: Path, adapter_dir: Path, tokenizer, merged_dir: Path) -> Path:
    """Merge the adapter into a fresh fp32 copy of the base and save it with the tokenizer.

    Merging into freshly loaded full-precision weights (not into the training
    copy) is what keeps a QLoRA run from merging into 4-bit weights, the
    anchors' known quality loss.
    """
    import torch
    from peft import PeftModel

    from tutorlm.models import load_causal_lm

    base = load_causal_lm(base_path, dtype=torch.float32)
    if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))  # the adapter carries the trained rows
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.pad_token_id = tokenizer.pad_token_id
    if merged.generation_config is not None:
        merged.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = merged_dir.with_name(merged_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    follow_umask(tmp)  # safetensors writes its files 0600
    shutil.rmtree(merged_dir, ignore_errors=True)
    tmp.rename(merged_dir)
    return merged_dir
