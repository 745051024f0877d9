"""What training needs from the machine beyond the hardware layer: QLoRA, and its error.

Device, dtype and threads are decided in ``tutorlm.hardware`` for every stage.
"""

from __future__ import annotations

import importlib.util

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
            "train.qlora=true needs the bitsandbytes package: pip install bitsandbytes "
            "(or set train.qlora=false)."
        )


def qlora_quantization_config():
    """The 4-bit NF4 config of QLoRA (double quantization, bf16 compute)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
