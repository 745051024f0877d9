"""What training needs from the machine beyond the hardware layer: QLoRA, bitsandbytes,
and their error.

Device, dtype and threads are decided in ``tutorlm.hardware`` for every stage.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection

from tutorlm.errors import TutorlmError


class TrainError(TutorlmError):
    """A training run that cannot start or finish, with what to do about it."""


def require_qlora_support() -> None:
    """Fail with what is missing unless 4-bit QLoRA can run here.

    Raises:
        TrainError: without a CUDA GPU, or without bitsandbytes.
    """
    import torch

    if not torch.cuda.is_available():
        raise TrainError(
            "train.qlora=true needs a CUDA GPU (bitsandbytes' 4-bit training kernels); "
            "this machine has none. Set train.qlora=false to train LoRA on the full-precision "
            "base (bf16 where the CPU supports it)."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError(
            "train.qlora=true needs the bitsandbytes package: pip install 'tutorlm[gpu]' "
            "(or set train.qlora=false)."
        )


def qlora_quantization_config(compute_dtype=None):
    """The 4-bit NF4 config of QLoRA (double quantization), computing in
    ``compute_dtype`` (bf16 by default; fp16 on a GPU without bf16)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
    )


GPU_EXTRA = "pip install 'tutorlm[gpu]'"
"""The install command of the optional GPU dependencies (bitsandbytes)."""


def optim_needs_bitsandbytes(name: str) -> bool:
    """Whether transformers builds the optimizer ``name`` from bitsandbytes.

    Paged, 8-bit and ``bnb`` variants of AdamW, and bitsandbytes' Lion, RMSprop and
    AdEMAMix; ``adamw_torch_4bit`` / ``adamw_torch_8bit`` are torchao's, not bitsandbytes'.
    """
    name = str(name).lower()
    if "torch" in name:
        return False
    return any(part in name for part in ("paged", "bnb", "8bit", "32bit", "lion", "ademamix"))


def bitsandbytes_keys(recipe, stages: Collection[str] = ("sft", "dpo", "quantize")) -> list[str]:
    """The recipe settings that need bitsandbytes in the given pipeline stages.

    ``train.qlora``, a bitsandbytes ``optim`` in ``train.sft`` / ``train.dpo``, and
    ``bnb-*`` quantize methods where the recipe's device is a CUDA GPU (on the CPU
    the quantize stage lists them as skipped, so they need nothing).
    """
    from tutorlm.hardware import resolve_device

    keys = []
    train = recipe.train
    if train.qlora and {"sft", "dpo"} & set(stages):
        keys.append("train.qlora=true")
    for kind in ("sft", "dpo"):
        optim = getattr(train, kind).get("optim")
        if kind in stages and optim is not None and optim_needs_bitsandbytes(optim):
            keys.append(f"train.{kind}.optim={optim}")
    if "quantize" in stages and resolve_device(recipe.device).startswith("cuda"):
        keys += [f"quantize.methods: {m}" for m in recipe.quantize.methods if m.startswith("bnb-")]
    return keys


def cuda_only_keys(recipe, stages: Collection[str] = ("sft", "dpo")) -> list[str]:
    """The training settings that run on a CUDA GPU only: 4-bit QLoRA (bitsandbytes'
    kernels) and paged optimizers (CUDA unified memory)."""
    keys = []
    train = recipe.train
    if train.qlora and {"sft", "dpo"} & set(stages):
        keys.append("train.qlora=true")
    for kind in ("sft", "dpo"):
        optim = str(getattr(train, kind).get("optim") or "")
        if kind in stages and "paged" in optim.lower():
            keys.append(f"train.{kind}.optim={optim}")
    return keys


def require_bitsandbytes(recipe, stages: Collection[str] = ("sft", "dpo", "quantize")) -> None:
    """Fail before anything runs when the recipe needs bitsandbytes or a CUDA GPU and
    this machine lacks it.

    Called by ``tutorlm run`` before its first stage (so the data build is not spent
    on a run that stops at SFT) and by ``tutorlm train``.

    Raises:
        TrainError: naming each recipe key that needs it, and the install command or
            the device the recipe resolved to.
    """
    from tutorlm.hardware import resolve_device

    on_cpu = cuda_only_keys(recipe, stages)
    device = resolve_device(recipe.device) if on_cpu else "cuda"
    if on_cpu and not device.startswith("cuda"):
        raise TrainError(
            f"{'; '.join(on_cpu)}: runs on a CUDA GPU only (with bitsandbytes: {GPU_EXTRA}), "
            f"and this run's device is {device} (device: {recipe.device}). Run it on a GPU "
            "machine, or change "
            f"{'that setting' if len(on_cpu) == 1 else 'those settings'} "
            "(`tutorlm run RECIPE --smoke` replaces them with CPU ones)."
        )
    keys = bitsandbytes_keys(recipe, stages)
    if keys and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError(
            f"{'; '.join(keys)}: needs the bitsandbytes package, which is not installed. "
            f"{GPU_EXTRA} (on a CUDA machine), or change "
            f"{'that setting' if len(keys) == 1 else 'those settings'} "
            "(`tutorlm run RECIPE --smoke` replaces them with CPU ones)."
        )
