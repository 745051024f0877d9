"""Tiny random stand-ins for the reports' base models, for ``tutorlm run --smoke``.

A smoke run executes every stage of a recipe offline in minutes: the base model is
replaced by a randomly initialised model of the same architecture family, shrunk
to two layers, over the bundled SmolLM2 tokenizer (the tokenizer is not what the
smoke run checks; the architecture's code paths are). The shrunk configurations
below are the facts a smoke run uses; everything else is the real recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tutorlm.errors import TutorlmError
from tutorlm.models import BUNDLED, load_tokenizer, tutorlm_home

# The real models of the three reports and their architecture families.
MODEL_FAMILIES: dict[str, str] = {
    "Qwen/Qwen1.5-0.5B-Chat": "qwen2",
    "bigscience/bloom-560m": "bloom",
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": "llama",
    "deepseek-ai/deepseek-math-7b-rl": "llama",
    BUNDLED: "llama",
}

# Two layers, hidden size 64: a forward pass costs microseconds, yet every module
# of the family (attention with grouped KV heads where it has them, MLP, norms,
# tied or untied head) is exercised.
_DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
TINY_CONFIGS: dict[str, dict] = {
    "llama": {"config_class": "LlamaConfig", **_DECODER},
    "qwen2": {"config_class": "Qwen2Config", **_DECODER},
    "bloom": {
        "config_class": "BloomConfig",
        "hidden_size": 64,
        "n_layer": 2,
        "n_head": 4,
        "tie_word_embeddings": True,
    },
}

SMOKE_NEW_TOKENS = 16
"""Longest generation of a smoke run (rejected answers, generation metrics): a random
model's text is noise, so more tokens only cost time."""
SMOKE_BATCH = 4
"""Largest per-device batch of a smoke run (with no gradient accumulation): the code
paths are the same at any batch size."""


def family_of(model_spec: str, declared: str | None = None) -> str:
    """The architecture family of a model spec (``declared`` wins when given)."""
    family = declared or MODEL_FAMILIES.get(model_spec)
    if family is None:
        raise TutorlmError(
            f"smoke mode does not know the architecture of {model_spec!r}: "
            f"set `smoke_family:` to one of {sorted(TINY_CONFIGS)} in the recipe"
        )
    if family not in TINY_CONFIGS:
        raise TutorlmError(f"unknown family {family!r}; known: {sorted(TINY_CONFIGS)}")
    return family


def tiny_model(family: str, *, pad_token: bool = True, seed: int = 0) -> Path:
    """Build (once) and return a tiny random model directory of ``family``.

    Args:
        family: ``llama``, ``qwen2`` or ``bloom``.
        pad_token: keep the tokenizer's pad token; False removes it, like TinyLlama
            ships, so the smoke run exercises the "add a pad token" path.
        seed: initialisation seed.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    name = f"tiny-{family}-seed{seed}" + ("" if pad_token else "-nopad")
    target = tutorlm_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    spec = dict(TINY_CONFIGS[family])
    config_class = getattr(transformers, spec.pop("config_class"))
    tokenizer = load_tokenizer(BUNDLED)
    config = config_class(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if pad_token else None,
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if not pad_token:
        tokenizer.pad_token = None
    tmp = target.with_name(f".{name}.tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "tutorlm-smoke.json").write_text(json.dumps({"family": family, **TINY_CONFIGS[family]}))
    tmp.rename(target)
    return target


class SmokeConfig(BaseModel):
    """How ``tutorlm run RECIPE --smoke`` shrinks this recipe."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    family: str | None = None
    """Architecture family of the tiny stand-in (llama, qwen2, bloom); looked up from
    the base model's id when unset."""
    pad_token: bool = True
    """False gives the stand-in's tokenizer no pad token, as TinyLlama ships."""
    rows: int = Field(default=8, ge=2)
    """Most rows kept from any one source."""
    steps: int = Field(default=2, ge=1)
    """Training steps of each stage."""
    overrides: list[str] = Field(default_factory=list)
    """More ``key=value`` overrides applied in smoke mode only."""


def _shrink_source(source: dict, rows: int) -> None:
    from tutorlm.data import presets

    if source.get("type") == "hub":
        source["fixture"] = True
    if "mix" in source:  # a mixing preset is a cap or a count: shrink it like one
        source.update(presets.resolve(presets.MIXING, source.pop("mix"), "mix"))
    for key in ("cap", "count"):
        if source.get(key) is not None:
            source["cap"] = min(source.pop(key), rows)
    if source.get("type") == "reasoning_gym":
        source["per_generator"] = min(source.get("per_generator", rows), max(2, rows // 2))
    if source.get("corrupt") is not None:  # a model writing rejected answers: short ones
        corrupt = presets.resolve(presets.CORRUPT, source["corrupt"], "corrupt")
        corrupt["max_new_tokens"] = min(
            corrupt.get("max_new_tokens", SMOKE_NEW_TOKENS), SMOKE_NEW_TOKENS
        )
        corrupt["over_budget"] = "keep"  # a random stand-in model never ends an answer
        source["corrupt"] = corrupt


def rename_run(data: dict, name: str) -> dict:
    """A copy of a recipe dict under a new ``name``; every path inside its old run
    directory (``runs/<old name>/...``, e.g. ``train.prefs_val_file``) follows it, so
    that a smoke run or a sweep variant reads its own files, not the original run's."""
    root = str(data.get("run_root", "runs")).rstrip("/")
    old, new = f"{root}/{data['name']}/", f"{root}/{name}/"

    def moved(value):
        if isinstance(value, str) and value.startswith(old):
            return new + value[len(old) :]
        if isinstance(value, dict):
            return {key: moved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [moved(item) for item in value]
        return value

    return {**moved(data), "name": name}


def smoke_overrides(data: dict) -> dict:
    """A recipe dict shrunk for a smoke run: tiny model, fixture rows, two steps.

    Hub sources read their preset's fixture rows (same columns as the real
    dataset; exact dedup is off, as presets of one dataset share their rows), every
    source keeps at most ``smoke.rows`` rows (a mixing preset or ``count`` becomes a
    cap), each training stage runs ``smoke.steps`` steps at batch ``SMOKE_BATCH``
    without accumulation, evaluation scores a handful of items, and generations
    (rejected answers, generation metrics) stop at ``SMOKE_NEW_TOKENS``. The run is
    renamed ``<name>-smoke`` with its paths (:func:`rename_run`). Everything else,
    the rules and the stage order, is the recipe's own.
    """
    data = json.loads(json.dumps(data))
    smoke = SmokeConfig.model_validate(data.pop("smoke", {}) or {})
    from tutorlm.models import BUNDLED as bundled

    family = family_of(data.get("model", bundled), smoke.family)
    data["model"] = str(tiny_model(family, pad_token=smoke.pad_token))
    data = rename_run(data, f"{data['name']}-smoke")
    sources = [
        source
        for section in ("sft", "prefs", "mcqa")
        for source in ((data.get("data") or {}).get(section) or {}).get("sources", [])
    ] + [
        source
        for eval_set in ((data.get("data") or {}).get("eval_sets") or {}).values()
        for source in eval_set.get("sources", [])
    ]
    for source in sources:
        _shrink_source(source, smoke.rows)
    if any(source.get("type") == "hub" for source in sources):
        data["data"]["dedup"] = False  # presets of one dataset share their fixture rows
    train = data.setdefault("train", {})
    for stage in ("sft", "dpo"):
        section = train.setdefault(stage, {})
        section.pop("num_train_epochs", None)
        section.update(max_steps=smoke.steps, logging_steps=1, save_steps=smoke.steps)
        section["gradient_accumulation_steps"] = 1
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            section[key] = min(section.get(key, SMOKE_BATCH), SMOKE_BATCH)
        for key in ("warmup_steps", "eval_steps"):
            section.pop(key, None)
        if section.get("eval_strategy", "no") != "no":
            section["eval_strategy"] = "no"  # the stage still evaluates once at the end
    evaluate = data.setdefault("eval", {})
    evaluate["max_questions"] = 2 * smoke.rows
    evaluate["generation_max_new_tokens"] = SMOKE_NEW_TOKENS
    samples = data.setdefault("generation", {}).setdefault("samples", {})
    samples["max_new_tokens"] = min(
        samples.get("max_new_tokens", SMOKE_NEW_TOKENS), SMOKE_NEW_TOKENS
    )
    rag = data.setdefault("rag", {})
    rag["ablation_ks"] = rag.get("ablation_ks", [1, 3, 5])[:1]
    rag["ablation_chunk_tokens"] = rag.get("ablation_chunk_tokens", [64, 200])[:1]
    quantize = data.setdefault("quantize", {})
    if "methods" in quantize:
        quantize["methods"] = quantize["methods"][:2]
    else:  # one int8 and one int4 method, each a different code path
        quantize["methods"] = ["int8-packed", "int4-weight"]
    quantize.update(references=["float32"], isolate=False, repeats=1, new_tokens=SMOKE_NEW_TOKENS)
    return {"recipe": data, "overrides": smoke.overrides}
