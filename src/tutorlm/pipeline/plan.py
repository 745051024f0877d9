"""``tutorlm run RECIPE --dry-run``: what a run would do, before it does anything.

For each stage the recipe enables (``tutorlm.contract.CONTRACTS``), the plan says
how many rows it trains on where the recipe fixes them, how many optimizer steps
that makes, the device and dtype, and for the training stages an estimate of peak
GPU memory. It downloads nothing, builds nothing, trains nothing and writes no file:
a model that is neither local nor in the Hugging Face cache takes its shape from
:data:`KNOWN_MODELS` (the reports' models), and the plan says so.

The memory estimate, in bytes, for one process::

    weights     = params x bytes(dtype)               (0.5 byte a weight with train.qlora)
    lora        = lora_params x (4 + 4 + 8)           (fp32 weight, fp32 grad, Adam's 2 fp32 moments)
    activations = layers x hidden x tokens x bytes(dtype) x ACTIVATION_FACTOR
                  with activation checkpointing:
                  layers x hidden x tokens x bytes(dtype)        (each layer's input kept)
                  + hidden x tokens x bytes(dtype) x ACTIVATION_FACTOR (one layer recomputed)
    logits      = tokens x vocab x 4                  (fp32 logits for the loss)
    peak        = weights + lora + activations + logits

where ``tokens = per_device_train_batch_size x max_length`` (DPO with
``train.dpo_split_pairs: false`` runs chosen and rejected in one pass: twice that).
``lora_params`` sums ``r x (in + out)`` over the adapted modules of every layer.

Its limits: it has never been checked against a GPU (this project has measured
nothing on one yet); on a CPU it is 32-46 % under the measured peak of the same
steps (``benchmarks/plan_memory.py``, ``docs/benchmarks.md``); it leaves out the CUDA context (~0.5 GB), the allocator's
fragmentation, the temporary buffers of the attention kernel and of the optimizer
step, and sequences shorter than ``max_length`` (the real peak is usually lower for
short rows, higher for fragmentation). Sharded setups (FSDP, ZeRO-3) divide
``weights`` between processes; the estimate is per process without sharding.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tutorlm.contract import CONTRACTS, value_at
from tutorlm.errors import TutorlmError

ACTIVATION_FACTOR = 17
"""Values kept per layer, per token, per hidden unit in the backward: Korthikanti et
al. (2022) count ``34 x s x b x h`` bytes a transformer layer at 2 bytes a value,
without the ``a x s`` attention-score term that flash / SDPA attention does not keep."""

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model's config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    params: int
    source: str = "config.json"

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads


KNOWN_MODELS: dict[str, ModelShape] = {
    "Qwen/Qwen1.5-0.5B-Chat": ModelShape(24, 1024, 2816, 16, 16, 151936, 463_987_712),
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": ModelShape(
        22, 2048, 5632, 32, 4, 32000, 1_100_048_384
    ),
    "deepseek-ai/deepseek-math-7b-rl": ModelShape(30, 4096, 11008, 32, 32, 102400, 6_910_365_696),
    "bigscience/bloom-560m": ModelShape(24, 1024, 4096, 16, 16, 250880, 559_214_592),
    "bundled:smollm2-135m-instruct": ModelShape(30, 576, 1536, 9, 3, 49152, 134_515_008),
}
"""The reports' models (and the bundled one), from their published ``config.json``:
layers, hidden size, intermediate size, heads, key/value heads, vocabulary, parameters."""


def shape_from_config(config: Mapping[str, Any], source: str = "config.json") -> ModelShape:
    """A model's shape from its ``config.json`` (Llama, Qwen2, Mistral or BLOOM names)."""
    hidden = config.get("hidden_size") or config["n_embed"]
    layers = config.get("num_hidden_layers") or config["n_layer"]
    heads = config.get("num_attention_heads") or config["n_head"]
    kv_heads = config.get("num_key_value_heads") or heads
    intermediate = config.get("intermediate_size") or 4 * hidden
    vocab = config["vocab_size"]
    kv_dim = hidden // heads * kv_heads
    gated = 2 if "intermediate_size" not in config else 3  # BLOOM: up, down; Llama: + gate
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + gated * hidden * intermediate
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    params = layers * per_layer + embeddings
    return ModelShape(layers, hidden, intermediate, heads, kv_heads, vocab, params, source)


def model_shape(spec: str) -> ModelShape:
    """The shape of ``spec`` without downloading: a local directory's or the cached
    ``config.json``, else :data:`KNOWN_MODELS` (``source`` says which)."""
    local = Path(spec) / "config.json"
    if local.is_file():
        return shape_from_config(json.loads(local.read_text()), str(local))
    if not spec.startswith("bundled:"):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
        except Exception:  # an id the hub library refuses: fall through to the table
            cached = None
        if isinstance(cached, str):
            return shape_from_config(json.loads(Path(cached).read_text()), cached)
    if spec in KNOWN_MODELS:
        known = KNOWN_MODELS[spec]
        return ModelShape(**{**known.__dict__, "source": "not cached: published config"})
    raise TutorlmError(
        f"the dry run knows no shape for model {spec!r}: not a local directory, not in the "
        f"Hugging Face cache, not one of {', '.join(KNOWN_MODELS)}"
    )


def lora_params(shape: ModelShape, r: int, modules: list[str] | str) -> int:
    """``r x (in + out)`` summed over the adapted modules of every layer."""
    h, kv, inter = shape.hidden, shape.kv_dim, shape.intermediate
    sizes = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
        "query_key_value": (h, h + 2 * kv),
        "dense": (h, h),
        "dense_h_to_4h": (h, inter),
        "dense_4h_to_h": (inter, h),
    }
    if modules == "all-linear":
        modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    per_layer = sum(r * sum(sizes[name]) for name in modules if name in sizes)
    return shape.layers * per_layer


def train_dtype(section: Mapping[str, Any], default: str) -> str:
    """The dtype a training stage runs in: ``bf16`` / ``fp16`` of its section; unset,
    ``default``, the device's mixed precision (``train/trl_args.py``'s rule: bf16 where
    it is fast, fp16 on a CUDA GPU without bf16, else fp32)."""
    if section.get("bf16", default == "bfloat16"):
        return "bfloat16"
    if section.get("fp16", default == "float16"):
        return "float16"
    return "float32"


def memory_estimate(
    shape: ModelShape,
    *,
    dtype: str,
    tokens: int,
    lora_r: int,
    lora_modules: list[str] | str,
    qlora: bool = False,
    checkpointing: bool = False,
) -> dict[str, int]:
    """Peak GPU bytes of one training process, by part (the module docstring's formula)."""
    size = BYTES[dtype]
    weights = shape.params // 2 if qlora else shape.params * size
    lora = lora_params(shape, lora_r, lora_modules) * (4 + 4 + 8)
    one_layer = shape.hidden * tokens * size * ACTIVATION_FACTOR
    if checkpointing:
        activations = shape.layers * shape.hidden * tokens * size + one_layer
    else:
        activations = shape.layers * one_layer
    logits = tokens * shape.vocab * 4
    parts = {"weights": weights, "lora": lora, "activations": activations, "logits": logits}
    return {**parts, "peak": sum(parts.values())}


def section_rows(section: Mapping[str, Any] | None) -> tuple[int | None, bool]:
    """Training rows of a data section and whether that number is exact.

    ``count`` is exact, ``cap`` an upper bound; a source with neither makes the number
    unknown until the data is built (``None``). Rows of a ``to_split: train`` source
    all train; the others are shared by the section's split."""
    if not section:
        return None, False
    share = (section.get("split") or {}).get("train", 1.0)
    total, exact = 0.0, True
    for source in section.get("sources") or []:
        rows = source.get("count") or source.get("cap")
        if rows is None:
            return None, False
        exact = exact and source.get("count") is not None
        total += rows if source.get("to_split") == "train" else rows * share
    return int(total), exact


def optimizer_steps(section: Mapping[str, Any], rows: int | None, processes: int) -> int | None:
    """``max_steps``, else ``ceil(epochs x rows / (batch x accumulation x processes))``."""
    if section.get("max_steps", -1) > 0:
        return int(section["max_steps"])
    if rows is None:
        return None
    batch = section.get("per_device_train_batch_size", 8)
    accumulation = section.get("gradient_accumulation_steps", 1)
    epochs = section.get("num_train_epochs", 3)
    return math.ceil(epochs * rows / (batch * accumulation * processes))


def _device(recipe: Mapping[str, Any]) -> tuple[str, bool]:
    """The device the recipe's stages would run on, and whether this machine has it
    (if not, the setting with the reason, so that a plan for a GPU prints on a laptop)."""
    from tutorlm.hardware import HardwareError, resolve_device

    setting = value_at(recipe, "device") or "auto"
    try:
        return resolve_device(setting), True
    except HardwareError as error:
        return f"{setting} (not here: {error})", False


def _gb(value: int) -> str:
    return f"{value / 1e9:.1f} GB"


def plan_lines(recipe: Mapping[str, Any], processes: int | None = None) -> list[str]:
    """The dry run's report of a resolved recipe (``Recipe.to_dict()``), one line each."""
    from tutorlm.hardware import auto_dtype, device_dtype

    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    device, resolved = _device(recipe)
    # training's own rule: the device's mixed precision, fp32 when it has none
    half = device_dtype("auto", device) if resolved else auto_dtype()
    default_dtype = str(half).removeprefix("torch.")
    shape = model_shape(str(recipe["model"]))
    lines = [
        f"model {recipe['model']}: {shape.layers} layers, hidden {shape.hidden}, "
        f"vocab {shape.vocab}, {shape.params / 1e9:.2f}B params ({shape.source})",
        f"device {device}, {processes} process(es)",
    ]
    sections = {"sft": "data.sft", "dpo": "data.prefs"}
    for name, stage in CONTRACTS.items():
        if not stage.enabled(recipe):
            continue
        if name not in sections:
            lines.append(f"{name}: no training")
            continue
        train = recipe.get("train") or {}
        section = train.get(name) or {}
        rows, exact = section_rows(value_at(recipe, sections[name]))
        if rows is None:
            rows_text = "rows unknown until built"
        else:
            rows_text = f"{rows} rows" if exact else f"at most {rows} rows"
        steps = optimizer_steps(section, rows, processes)
        dtype = train_dtype(section, default_dtype)
        lora = (train.get("dpo_lora") if name == "dpo" else None) or train["lora"]
        length = section.get("max_length", 1024)
        pairs = 1 if name == "sft" or train.get("dpo_split_pairs", True) else 2
        tokens = section.get("per_device_train_batch_size", 8) * length * pairs
        checkpointing = bool(
            section.get("activation_checkpointing") or section.get("gradient_checkpointing")
        )
        memory = memory_estimate(
            shape,
            dtype=dtype,
            tokens=tokens,
            lora_r=lora["r"],
            lora_modules=lora["target_modules"],
            qlora=bool(train.get("qlora")),
            checkpointing=checkpointing,
        )
        parts = ", ".join(
            f"{part} {_gb(value)}" for part, value in memory.items() if part != "peak"
        )
        lines.append(
            f"{name}: {rows_text}, {steps if steps is not None else 'unknown'} optimizer steps, "
            f"{dtype}, {tokens} tokens a step, activation checkpointing "
            f"{'on' if checkpointing else 'off'}; peak GPU memory ~{_gb(memory['peak'])} "
            f"({parts}; an estimate, docs/scale.md)"
        )
    return lines
