"""`tutorlm run --dry-run`: the memory formula on a tiny shape, the seed recipes offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tutorlm.pipeline.plan import (
    ModelShape,
    lora_params,
    memory_estimate,
    model_shape,
    optimizer_steps,
    plan_lines,
    section_rows,
)
from tutorlm.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelShape(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10, params=1000)


def test_lora_params_sum_r_times_in_plus_out():
    # q (8+8) + k (8+4) + v (8+4) + o (8+8) = 56 a layer at r 1; x 2 layers x r 2
    assert lora_params(TINY, 2, ["q_proj", "k_proj", "v_proj", "o_proj"]) == 224


def test_memory_estimate_exact_for_a_tiny_shape():
    estimate = memory_estimate(
        TINY,
        dtype="bfloat16",
        tokens=4,
        lora_r=2,
        lora_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    assert estimate == {
        "weights": 2000,  # 1,000 params x 2 bytes
        "lora": 224 * 16,  # fp32 weight + grad + 2 Adam moments
        "activations": 2 * 8 * 4 * 2 * 17,  # layers x hidden x tokens x bytes x 17
        "logits": 4 * 10 * 4,  # tokens x vocab x fp32
        "peak": 2000 + 3584 + 2176 + 160,
    }


def test_checkpointing_keeps_layer_inputs_and_one_layer():
    estimate = memory_estimate(
        TINY, dtype="float32", tokens=4, lora_r=1, lora_modules=[], qlora=True, checkpointing=True
    )
    assert estimate["weights"] == 500  # 4-bit
    assert estimate["activations"] == 2 * 8 * 4 * 4 + 8 * 4 * 4 * 17


def test_rows_and_steps():
    section = {
        "split": {"train": 0.5, "val": 0.5},
        "sources": [{"count": 100}, {"count": 40, "to_split": "train"}],
    }
    assert section_rows(section) == (90, True)
    assert section_rows({"sources": [{"cap": 10}]}) == (10, False)
    assert section_rows({"sources": [{"count": 10}, {}]}) == (None, False)
    batch = {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "num_train_epochs": 2,
    }
    assert optimizer_steps(batch, 90, processes=2) == 12  # ceil(2 x 90 / 16)
    assert optimizer_steps({**batch, "max_steps": 7}, None, processes=1) == 7
    assert optimizer_steps(batch, None, processes=1) is None


def test_local_config_json_is_read(tmp_path):
    config = {
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 16,
        "vocab_size": 10,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = model_shape(str(tmp_path))
    # a layer: q, o 8x8 each; k, v 8x4 each; gate, up, down 8x16 each = 576; + 10 x 8
    assert (shape.layers, shape.kv_dim, shape.params) == (2, 4, 2 * 576 + 80)


@pytest.mark.parametrize("name", ["zephyr", "epfllama", "probllms"])
def test_seed_recipes_plan_offline(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached: the table answers
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", [])
    lines = plan_lines(recipe.to_dict(), processes=1)
    assert "not cached: published config" in lines[0]
    assert any(line.startswith("dpo: ") for line in lines)
    if name == "probllms":
        dpo = next(line for line in lines if line.startswith("dpo: "))
        assert "2000 optimizer steps" in dpo and "activation checkpointing on" in dpo
        assert not any(line.startswith("sft: ") for line in lines)


def test_dry_run_writes_nothing(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "tutorlm", "run", str(ROOT / "recipes/probllms.yaml"), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "dpo: rows unknown until built, 2000 optimizer steps" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == []


@pytest.mark.parametrize(("bf16", "dtype"), [(True, "bfloat16"), (False, "float16")])
def test_the_plan_trains_in_the_gpus_mixed_precision(monkeypatch, tmp_path, bf16, dtype):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml", ["device=cuda"])  # no bf16 key
    lines = plan_lines(recipe.to_dict(), processes=1)
    sft = next(line for line in lines if line.startswith("sft: "))
    assert f"optimizer steps, {dtype}, " in sft
    assert lines[1] == "device cuda, 1 process(es)"
