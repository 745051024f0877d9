"""Evaluation at the recipe's cadence, and activation checkpointing, on the tiny model."""

from __future__ import annotations

import json

from train_support import (
    load_tiny_recipe,
    preference_records,
    sft_records,
    write_jsonl,
    write_run_data,
)

EVERY_STEP = {"eval_strategy": "steps", "eval_steps": 1, "max_steps": 2}


def eval_rows(path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [row for row in rows if row.get("split") == "eval"]


def test_recipe_eval_steps_evaluate_the_validation_file_during_training(tiny_model_dir, tmp_path):
    """eval_steps=1 over 2 steps: one row before training, one after each step, none repeated."""
    from tutorlm.train.dpo import train_dpo
    from tutorlm.train.sft import train_sft

    recipe = load_tiny_recipe(
        tiny_model_dir,
        tmp_path / "runs",
        sft=EVERY_STEP,
        dpo={**EVERY_STEP, "per_device_train_batch_size": 2},
    )
    data = write_run_data(recipe.run_dir)
    write_jsonl(data / "sft.val.jsonl", sft_records(3))
    write_jsonl(data / "prefs.val.jsonl", preference_records(3))
    sft, dpo = train_sft(recipe), train_dpo(recipe)

    sft_evals = eval_rows(sft.metrics_file)
    assert [row["step"] for row in sft_evals] == [0, 1, 2]
    assert all(row["eval_loss"] > 0 for row in sft_evals)
    dpo_evals = eval_rows(dpo.metrics_file)
    assert [row["step"] for row in dpo_evals] == [0, 1, 2]
    assert all(0 <= row["eval_rewards/accuracies"] <= 1 for row in dpo_evals)
    # before the first update the policy is the reference: no pair is ranked yet
    assert dpo_evals[0]["eval_rewards/accuracies"] == 0.0


def test_a_lora_step_runs_with_activation_checkpointing(tiny_model_dir, tmp_path):
    """``gradient_checkpointing: true`` (transformers 5's alias) recomputes, and LoRA still learns."""
    from safetensors.torch import load_file

    from tutorlm.train.dpo import train_dpo
    from tutorlm.train.sft import train_sft

    asked = {"gradient_checkpointing": True, "max_steps": 1}
    recipe = load_tiny_recipe(
        tiny_model_dir,
        tmp_path / "runs",
        sft=asked,
        dpo={**asked, "activation_checkpointing": True, "per_device_train_batch_size": 2},
    )
    write_run_data(recipe.run_dir)
    for result in (train_sft(recipe), train_dpo(recipe)):
        assert result.global_step == 1
        line = json.loads(result.metrics_file.read_text().splitlines()[0])
        assert line["grad_norm"] > 0  # gradients reached the adapter through recomputed blocks
        weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
        assert any(
            name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in weights.items()
        )
