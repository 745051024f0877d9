"""SFT then DPO on the tiny model: what is trained, what is frozen, what is saved and logged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import (
    load_tiny_recipe,
    preference_records,
    sft_records,
    write_jsonl,
    write_run_data,
)

from tutorlm.train.runtime import TrainError

EPS = 0.2


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One SFT run (2 steps) and one cDPO run from M1 (3 steps of one pair each)."""
    from tutorlm.train.dpo import train_dpo
    from tutorlm.train.sft import train_sft

    root = tmp_path_factory.mktemp("stages")
    recipe = load_tiny_recipe(
        tiny_model_dir,
        root / "runs",
        loss="cdpo",
        eps=EPS,
        beta=0.5,
        dpo={"per_device_train_batch_size": 1, "max_steps": 3, "learning_rate": 0.05},
    )
    write_run_data(recipe.run_dir)
    return recipe, train_sft(recipe), train_dpo(recipe)


def metric_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_and_dpo_write_adapter_merged_model_and_metrics(trained):
    recipe, sft, dpo = trained
    assert sft.output_dir == recipe.run_dir / "sft" and dpo.output_dir == recipe.run_dir / "dpo"
    for result in (sft, dpo):
        merged = result.merged_dir
        for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
            assert (merged / name).is_file(), name
        assert (merged / "generation_config.json").is_file()
        assert (result.adapter_dir / "adapter_model.safetensors").is_file()
        assert list((result.output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (sft.global_step, dpo.global_step) == (2, 3)
    assert json.loads((dpo.output_dir / "train_summary.json").read_text())["base_model"] == str(
        sft.merged_dir
    )


def test_metrics_have_one_line_per_logging_step(trained):
    _, sft, dpo = trained
    sft_lines = metric_lines(sft.output_dir / "metrics.jsonl")
    assert [line["step"] for line in sft_lines] == [1, 2]
    assert {"loss", "learning_rate", "grad_norm", "num_tokens"} <= set(sft_lines[0])
    assert sft_lines[1]["tokens_per_second"] > 0
    dpo_lines = metric_lines(dpo.output_dir / "metrics.jsonl")
    assert [line["step"] for line in dpo_lines] == [1, 2, 3]
    # before the first update the policy is the reference, exactly
    assert dpo_lines[0]["rewards/margins"] == 0.0 and dpo_lines[0]["rewards/accuracies"] == 0.0
    rewards = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"}
    assert all(rewards <= set(line) for line in dpo_lines)


def test_the_backpropagated_dpo_loss_is_tutorlms_cdpo(trained):
    """With one pair per step, the logged loss is cDPO at the logged margin, not TRL's sigmoid."""
    _, _, dpo = trained
    moved = 0
    for line in metric_lines(dpo.output_dir / "metrics.jsonl"):
        margin = line["rewards/margins"]  # beta * h
        cdpo = -(1 - EPS) * math.log(1 / (1 + math.exp(-margin))) - EPS * math.log(
            1 / (1 + math.exp(margin))
        )
        assert line["loss"] == pytest.approx(cdpo, abs=1e-5)
        if abs(margin) > 1e-3:
            moved += 1
            sigmoid_dpo = -math.log(1 / (1 + math.exp(-margin)))
            assert line["loss"] != pytest.approx(sigmoid_dpo, abs=1e-4)
    assert moved >= 1  # after the first step the policy differs from the reference


def test_saved_chat_template_is_the_one_used_in_training(trained, tiny_model_dir):
    from transformers import AutoTokenizer

    recipe, sft, dpo = trained
    used = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert used
    for directory in (sft.merged_dir, dpo.merged_dir, sft.adapter_dir):
        assert (directory / "chat_template.jinja").read_text() == used
    for checkpoint in sorted(sft.output_dir.glob("checkpoint-*")):
        assert (checkpoint / "chat_template.jinja").read_text() == used
        assert (checkpoint / "generation_config.json").is_file()
        assert (checkpoint / "tutorlm-complete.json").is_file()


def test_merged_model_is_base_plus_lora_update(trained, tiny_model_dir):
    """Untargeted weights are the base's exactly; a targeted one moved by B @ A * alpha / r."""
    _, sft, _ = trained
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(sft.merged_dir / "model.safetensors")
    adapter = load_file(sft.adapter_dir / "adapter_model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    update = adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"] * (8 / 4)
    assert update.abs().max() > 0
    assert torch.allclose(merged[name], base[name] + update, atol=1e-6)
    for untouched in ("model.layers.0.mlp.up_proj.weight", "model.norm.weight"):
        assert torch.equal(merged[untouched], base[untouched])


def build_trainer(kind, recipe, model_dir, bf16=False, **kwargs):
    from tutorlm.train import data, modeling
    from tutorlm.train.trainers import TutorDPOTrainer, TutorSFTTrainer
    from tutorlm.train.trl_args import build_args

    args = build_args(kind, recipe.train, 0, recipe.layout.stage_dir(kind))
    model, tokenizer = modeling.load_for_training(model_dir, half=torch.bfloat16 if bf16 else None)
    if kind == "sft":
        dataset, _ = data.load_split("sft", recipe.layout.data("sft.train.jsonl"), tokenizer, 128)
        collator, cls = data.SFTCollator(tokenizer.pad_token_id), TutorSFTTrainer
    else:
        path = recipe.layout.data("prefs.train.jsonl")
        dataset, _ = data.load_split("preference", path, tokenizer, 128)
        collator, cls = data.PreferenceCollator(tokenizer.pad_token_id), TutorDPOTrainer
    trainer = cls(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(recipe.train.lora),
        **kwargs,
    )
    return trainer, collator, dataset


def test_training_changes_lora_weights_and_leaves_base_weights(tiny_model_dir, tmp_path):
    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs", sft={"save_strategy": "no"})
    write_run_data(recipe.run_dir)
    trainer, _, _ = build_trainer("sft", recipe, tiny_model_dir)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for name, param in trainer.model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name


def test_cdpo_and_dpo_differ_in_loss_and_gradient_on_one_batch(tiny_model_dir, tmp_path):
    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs")
    write_run_data(recipe.run_dir)
    trainer, collator, dataset = build_trainer(
        "dpo", recipe, tiny_model_dir, loss_name="dpo", eps=0.0
    )
    torch.manual_seed(0)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:  # move the policy away from the reference
            param.data.normal_(std=0.5)
    batch = collator([dataset[i] for i in range(4)])
    results = {}
    for loss_name, eps in (("dpo", 0.0), ("cdpo", 0.3)):
        trainer.loss_name, trainer.eps = loss_name, eps
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = torch.cat(
            [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
        )
        results[loss_name] = (loss.item(), grads)
    assert results["dpo"][0] != pytest.approx(results["cdpo"][0], abs=1e-4)
    assert not torch.allclose(results["dpo"][1], results["cdpo"][1], atol=1e-6)


def test_split_pair_backward_gives_the_same_gradient(tiny_model_dir, tmp_path):
    """Backpropagating chosen then rejected halves equals one backward through both."""
    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs", loss="cdpo", eps=0.2)
    write_run_data(recipe.run_dir)
    trainer, collator, dataset = build_trainer(
        "dpo", recipe, tiny_model_dir, loss_name="cdpo", eps=0.2, split_pairs=True
    )
    torch.manual_seed(0)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.5)
    batch = collator([dataset[i] for i in range(4)])
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.train()
    trainer.model.zero_grad()
    whole = trainer.compute_loss(trainer.model, batch)
    whole.backward()
    expected = [p.grad.clone() for p in trainable]
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    split = trainer.training_step(trainer.model, batch)
    assert split.item() == pytest.approx(whole.item(), rel=1e-5)
    for param, grad in zip(trainable, expected, strict=True):
        assert torch.allclose(param.grad, grad, atol=1e-6, rtol=1e-4)


def test_bf16_training_loss_matches_fp32(tiny_model_dir, tmp_path):
    """bf16 as trained here (bf16 base weights, autocast) against plain fp32, same batch."""
    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs")
    write_run_data(recipe.run_dir)
    fp32, collator, dataset = build_trainer("sft", recipe, tiny_model_dir)
    bf16, _, _ = build_trainer("sft", recipe, tiny_model_dir, bf16=True)
    from tutorlm.logprobs import scored_logps

    batch = collator([dataset[i] for i in range(4)])
    inputs = (batch["input_ids"], batch["attention_mask"], batch["labels"] != -100)
    with torch.no_grad():
        fp32_loss = fp32.compute_loss(fp32.model, batch).item()
        fp32_logps = scored_logps(fp32.model, *inputs).logps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_loss = bf16.compute_loss(bf16.model, batch).item()
            bf16_logps = scored_logps(bf16.model, *inputs).logps
    assert (
        next(p for n, p in bf16.model.named_parameters() if "q_proj.base" in n).dtype
        == torch.bfloat16
    )
    assert bf16_loss == pytest.approx(fp32_loss, rel=1e-3)
    assert torch.allclose(bf16_logps, fp32_logps, atol=0.05)
    assert not torch.equal(bf16_logps, fp32_logps)  # bf16 really ran


def test_model_without_pad_token_gets_one_and_recipe_template_is_saved(
    smollm_tokenizer_dir, tmp_path
):
    """A TinyLlama-like model: no pad token; the recipe prescribes Zephyr's template."""
    from conftest import build_tiny_llama
    from transformers import AutoConfig, AutoTokenizer

    from tutorlm.templates import ZEPHYR
    from tutorlm.train.sft import run_sft

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    tokenizer.pad_token = None
    no_pad = tmp_path / "no-pad-tokenizer"
    tokenizer.save_pretrained(no_pad)
    model_dir = build_tiny_llama(no_pad, tmp_path / "tiny-no-pad")
    vocab = len(tokenizer)
    recipe = load_tiny_recipe(model_dir, tmp_path / "runs", "zephyr", sft={"max_steps": 1})
    write_run_data(recipe.run_dir)
    merged = run_sft(recipe) / "merged"
    assert (merged / "chat_template.jinja").read_text() == ZEPHYR
    saved = AutoTokenizer.from_pretrained(merged)
    assert saved.pad_token == "<|pad|>" and len(saved) == vocab + 1
    assert AutoConfig.from_pretrained(merged).vocab_size == vocab + 1
    assert (
        load_file(merged / "model.safetensors")["model.embed_tokens.weight"].shape[0] == vocab + 1
    )


def test_resume_continues_only_a_run_with_the_same_settings_and_data(tiny_model_dir, tmp_path):
    from tutorlm.train.sft import train_sft

    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs", sft={"max_steps": 1})
    write_run_data(recipe.run_dir)
    first = train_sft(recipe)
    trained = load_file(first.adapter_dir / "adapter_model.safetensors")
    same = train_sft(recipe, resume=True)
    # a finished run is loaded, not trained one step further (transformers would)
    assert same.summary["resumed_from_step"] == 1 and same.global_step == 1
    reloaded = load_file(same.adapter_dir / "adapter_model.safetensors")
    assert reloaded.keys() == trained.keys()
    assert all(torch.equal(reloaded[name], trained[name]) for name in trained)
    # another learning rate: the old checkpoints are not resumed from
    changed = load_tiny_recipe(
        tiny_model_dir, tmp_path / "runs", sft={"max_steps": 1, "learning_rate": 0.5}
    )
    fresh = train_sft(changed, resume=True)
    assert fresh.summary["resumed_from_step"] is None and fresh.global_step == 1
    # a DPO-only change leaves SFT's checkpoints usable
    dpo_only = load_tiny_recipe(
        tiny_model_dir, tmp_path / "runs", beta=0.3, sft={"max_steps": 1, "learning_rate": 0.5}
    )
    assert train_sft(dpo_only, resume=True).summary["resumed_from_step"] == 1
    # rebuilt data: not resumed from either
    write_jsonl(recipe.run_dir / "data" / "sft.train.jsonl", sft_records(6))
    assert train_sft(dpo_only, resume=True).summary["resumed_from_step"] is None


def test_dpo_from_m1_needs_sft_first(tiny_model_dir, tmp_path):
    from tutorlm.train.dpo import run_dpo

    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs")
    write_run_data(recipe.run_dir)
    with pytest.raises(TrainError, match="Run `tutorlm train sft` first"):
        run_dpo(recipe)


def test_missing_data_file_says_how_to_make_it(tiny_model_dir, tmp_path):
    from tutorlm.train.sft import run_sft

    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs")
    with pytest.raises(TrainError, match=r"sft.train.jsonl: no such data file.*tutorlm data build"):
        run_sft(recipe)


def test_dpo_from_m0_with_precomputed_reference(tiny_model_dir, tmp_path):
    from tutorlm.train.dpo import train_dpo

    recipe = load_tiny_recipe(
        tiny_model_dir,
        tmp_path / "runs",
        dpo_start="m0",
        precompute_ref_logps=True,
        loss="ipo",
        dpo={"max_steps": 1, "save_strategy": "no"},
    )
    write_jsonl(recipe.run_dir / "data" / "prefs.train.jsonl", preference_records(4))
    write_jsonl(recipe.run_dir / "data" / "prefs.val.jsonl", preference_records(2))
    result = train_dpo(recipe)
    lines = metric_lines(result.output_dir / "metrics.jsonl")
    # held-out pairs are scored before the first step and after the last
    evals = [line for line in lines if line.get("split") == "eval"]
    assert [line["step"] for line in evals] == [0, 1]
    assert all("eval_rewards/accuracies" in line for line in evals)
    line = next(line for line in lines if "loss" in line)
    # step 1: the policy is the reference, so IPO's loss is (0 - 1 / (2 beta))^2 = 25
    assert line["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-4)
    assert line["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
