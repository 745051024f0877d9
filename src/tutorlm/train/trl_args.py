"""The ``sft:`` / ``dpo:`` recipe sections, turned into TRL's ``SFTConfig`` / ``DPOConfig``.

tutorlm fills in its defaults first (the fast ones: no gradient checkpointing,
bf16 where the training device multiplies it natively, length-grouped batches,
the recipe's ``device``) and the recipe's values win. TRL validates its own fields; an unknown key fails before
any model is loaded, naming the key and the closest valid one, like the rest of
the recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from tutorlm.hardware import device_dtype, resolve_device
from tutorlm.train.config import TrainConfig
from tutorlm.train.runtime import TrainError


def _hardware_defaults(device: str = "auto") -> dict[str, Any]:
    """``use_cpu`` and mixed precision for the recipe's device setting.

    Mixed precision follows ``hardware.device_dtype("auto", device)``: bf16 where the
    device multiplies it natively, fp16 (with the Trainer's loss scaling) on a CUDA
    GPU without bf16, fp32 elsewhere.

    The Trainer takes no GPU index: one process trains on every visible GPU from
    ``cuda:0`` on, and under ``accelerate launch`` each process on the GPU of its
    rank. A ``cuda:N`` that is not simply the only GPU is refused with the way to
    pick that GPU instead (``CUDA_VISIBLE_DEVICES``), rather than silently training
    on another one.
    """
    import torch

    resolved = resolve_device(device)
    if resolved.startswith("cuda:") and (resolved != "cuda:0" or torch.cuda.device_count() > 1):
        index = resolved.partition(":")[2]
        raise TrainError(
            f"device {device!r}: transformers' Trainer cannot be pointed at one GPU by index; "
            f"run with CUDA_VISIBLE_DEVICES={index} and device: cuda (or accelerate launch "
            "--gpu_ids for several processes)"
        )
    half = device_dtype("auto", resolved)  # never fp16 on a CPU: no fast fp16 kernels there
    return {
        "bf16": half == torch.bfloat16,
        "fp16": half == torch.float16,  # a CUDA GPU without bf16 (V100, T4): fp16 AMP
        "use_cpu": resolved == "cpu",
    }


def _common_defaults(seed: int) -> dict[str, Any]:
    """What every tutorlm training run uses unless the recipe says otherwise."""
    return {
        "seed": seed,
        "train_sampling_strategy": "group_by_length",
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,  # < 1: a fraction of the total steps
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "logging_steps": 5,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 2,
        "report_to": "none",  # TensorBoard events are written by tutorlm's own callback
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,  # every LoRA parameter is used at every step
    }


def sft_defaults(seed: int, device: str = "auto") -> dict[str, Any]:
    """tutorlm's defaults for ``SFTConfig`` on ``device`` (a recipe's device setting)."""
    return {
        **_common_defaults(seed),
        **_hardware_defaults(device),
        "learning_rate": 2e-4,
        "max_length": 1024,
        "dataset_kwargs": {"skip_prepare_dataset": True},  # tutorlm tokenizes itself
    }


def dpo_defaults(seed: int, device: str = "auto") -> dict[str, Any]:
    """tutorlm's defaults for ``DPOConfig`` on ``device`` (a recipe's device setting)."""
    return {
        **_common_defaults(seed),
        **_hardware_defaults(device),
        "learning_rate": 5e-5,
        "max_length": 1024,
    }


def _config_class(kind: str):
    from trl import DPOConfig, SFTConfig

    return SFTConfig if kind == "sft" else DPOConfig


def unknown_key_message(kind: str, key: str, valid: list[str]) -> str:
    """``unknown key 'train.sft.lerning_rate' (did you mean 'learning_rate'?)``."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean 'train.{kind}.{close[0]}'?)" if close else ""
    name = "SFTConfig" if kind == "sft" else "DPOConfig"
    return f"unknown key 'train.{kind}.{key}'{hint}: not a field of TRL's {name}"


def build_args(
    kind: str,
    train: TrainConfig,
    seed: int,
    output_dir: Path | str,
    *,
    has_eval: bool = False,
    device: str = "auto",
):
    """TRL's config for one stage: tutorlm's defaults, then the recipe's section.

    Args:
        kind: ``sft`` or ``dpo``.
        train: the recipe's ``train`` section.
        seed: the recipe's seed (a ``seed`` in the section wins).
        output_dir: where the stage writes its checkpoints.
        has_eval: a validation file exists: evaluate once before the first step
            too, so that the held-out loss (and DPO reward accuracy) before and
            after training sit side by side in ``metrics.jsonl``. Training losses
            of length-grouped batches vary with the batch's source; this does not.
        device: the recipe's ``device`` setting: ``use_cpu`` and ``bf16`` follow it.

    Raises:
        TrainError: an unknown key (with the closest valid one), a value TRL refuses,
            or a ``cuda:N`` the Trainer cannot be pointed at.
        HardwareError: a device this machine does not have.
    """
    config_class = _config_class(kind)
    section = train.sft if kind == "sft" else train.dpo
    valid = [f.name for f in dataclasses.fields(config_class) if f.init]
    for key in section:
        if key not in valid:
            raise TrainError(unknown_key_message(kind, key, valid))
    defaults = sft_defaults(seed, device) if kind == "sft" else dpo_defaults(seed, device)
    defaults["eval_on_start"] = has_eval
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(section):
        # recomputation costs a third of a step; small models fit without it
        defaults["activation_checkpointing"] = False
    values = {**defaults, **section, "output_dir": str(output_dir)}
    if kind == "dpo":
        values["beta"] = train.beta
        values["loss_type"] = ["sigmoid"]  # placeholder for TRL's checks; tutorlm computes the loss
    try:
        return config_class(**values)
    except (ValueError, TypeError) as error:
        raise TrainError(f"train.{kind}: {error}") from None


def check_trl_sections(train: TrainConfig, seed: int = 0, device: str = "auto") -> dict:
    """Validate ``train.sft`` and ``train.dpo`` against TRL without training.

    Called at the start of each stage; the pipeline may call it up front so that
    a typo in ``train.dpo`` fails before SFT spends its minutes.

    Returns:
        ``{"sft": SFTConfig, "dpo": DPOConfig}``, as the stages would build them.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return {
            kind: build_args(kind, train, seed, Path(scratch) / kind, device=device)
            for kind in ("sft", "dpo")
        }
