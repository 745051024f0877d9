"""The model a stage trains: loaded once, with a pad token, ready for LoRA.

The reference model of DPO is this same model with its adapter disabled, so
there is never a second copy of the weights in memory.
"""

from __future__ import annotations

from pathlib import Path

from tutorlm.templates import apply_template
from tutorlm.train.config import LoraSettings
from tutorlm.train.runtime import qlora_quantization_config, require_qlora_support

PAD_TOKEN = "<|pad|>"
"""The pad token added to a tokenizer that has none."""


def ensure_pad_token(model, tokenizer) -> bool:
    """Give a tokenizer without a pad token one, and the model a row for it.

    Models such as TinyLlama ship without a pad token; reusing EOS for padding
    would teach nothing wrong here (padding never carries a loss), but a
    dedicated token keeps the saved tokenizer honest for every later stage.

    Returns:
        True if a token was added (the embeddings were resized).
    """
    added = False
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        model.resize_token_embeddings(len(tokenizer))
        added = True
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return added


def load_for_training(
    path: Path | str,
    *,
    half=None,
    qlora: bool = False,
    chat_template: str | None = None,
):
    """``(model, tokenizer)`` of a local HF directory, ready for a trainer.

    ``half`` is the mixed-precision dtype of the run (``torch.bfloat16``, or
    ``torch.float16`` on a GPU without bf16; see :func:`mixed_precision`). With it
    the frozen base weights are loaded in that dtype: autocast would otherwise cast
    every fp32 weight at every forward and keep the copies alive for the backward,
    which costs time and about 2 bytes per parameter. The LoRA weights stay fp32
    (PEFT upcasts adapters, which fp16 loss scaling also needs), and the merged
    model is built from the fp32 base, so nothing trained or saved loses precision.
    Without ``half`` everything is fp32; under QLoRA the base is 4-bit and computes
    in ``half`` (bf16 when none is given). ``chat_template`` is the recipe's (a name such as
    ``zephyr`` or Jinja text); ``None`` keeps the model's own. Either way the
    tokenizer that is trained with is the one saved with every checkpoint.

    Raises:
        TrainError: QLoRA asked for where it cannot run.
    """
    import torch

    from tutorlm.models import load_causal_lm, load_tokenizer

    tokenizer = apply_template(load_tokenizer(path), chat_template)
    kwargs = {"dtype": half or torch.float32}
    if qlora:
        require_qlora_support()
        compute = half or torch.bfloat16
        kwargs = {"dtype": compute, "quantization_config": qlora_quantization_config(compute)}
    model = load_causal_lm(path, **kwargs)  # safetensors only, no folder code run
    ensure_pad_token(model, tokenizer)
    return model, tokenizer


def mixed_precision(args):
    """The half dtype a trainer's arguments train in: bf16, fp16 or None (fp32)."""
    import torch

    if getattr(args, "bf16", False):
        return torch.bfloat16
    if getattr(args, "fp16", False):
        return torch.float16
    return None


def lora_config(settings: LoraSettings):
    """PEFT's ``LoraConfig`` for the recipe's LoRA settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
