"""The ``train`` recipe section: tutorlm's keys and TRL's pass-through sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_support import load_tiny_recipe, write_run_data

from tutorlm.hardware import bf16_is_fast
from tutorlm.recipe import RecipeError, load_recipe, recipe_from_dict
from tutorlm.train.config import TrainConfig
from tutorlm.train.runtime import TrainError
from tutorlm.train.trl_args import build_args, check_trl_sections

REPO = Path(__file__).resolve().parents[1]


def recipe_with(train: dict):
    return recipe_from_dict({"name": "t", "train": train})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"dpo": {"beta": 0.3}}, "'beta' cannot be set in train.dpo: use train.beta"),
        ({"dpo": {"label_smoothing": 0.2}}, "use train.eps with train.loss: cdpo or robust"),
        ({"dpo": {"loss_type": "ipo"}}, "use train.loss"),
        ({"sft": {"output_dir": "x"}}, "tutorlm writes to <run_dir>/sft and <run_dir>/dpo"),
        ({"sft": {"packing": True}}, "'packing' cannot be set in train.sft"),
        ({"sft": {"loss_type": "dft"}}, "tutorlm's SFT loss is the mean NLL of assistant tokens"),
        (
            {"dpo": {"activation_offloading": True}},
            "tutorlm's trainers (transformers.Trainer) do not",
        ),
        ({"loss": "dpo", "eps": 0.2}, "has no effect with loss 'dpo'"),
        ({"loss": "robust", "eps": 0.5}, "loss 'robust' needs eps < 0.5"),
    ],
)
def test_keys_tutorlm_owns_are_refused_with_the_reason(section, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recipe_with(section)


def test_unknown_tutorlm_key_names_the_nearest_one():
    with pytest.raises(
        RecipeError, match=r"unknown key 'train.los' \(did you mean 'train.loss'\?\)"
    ):
        recipe_with({"los": "cdpo"})


def test_unknown_trl_key_names_the_nearest_one(tmp_path):
    train = TrainConfig(sft={"lerning_rate": 1e-4})
    with pytest.raises(TrainError) as error:
        build_args("sft", train, 0, tmp_path)
    assert str(error.value) == (
        "unknown key 'train.sft.lerning_rate' (did you mean 'train.sft.learning_rate'?): "
        "not a field of TRL's SFTConfig"
    )


def test_trl_refuses_its_own_bad_values(tmp_path):
    with pytest.raises(TrainError, match="train.dpo: "):
        build_args("dpo", TrainConfig(dpo={"lr_scheduler_type": "cosinus"}), 0, tmp_path)


def test_recipe_values_override_tutorlm_defaults(tmp_path):
    args = build_args("sft", TrainConfig(sft={"learning_rate": 1e-3, "seed": 7}), 3, tmp_path)
    assert args.learning_rate == 1e-3 and args.seed == 7
    defaults = build_args("dpo", TrainConfig(beta=0.3), 3, tmp_path)
    assert defaults.seed == 3 and defaults.beta == 0.3
    assert defaults.activation_checkpointing is False  # TRL's default is on
    assert defaults.train_sampling_strategy == "group_by_length"
    assert defaults.bf16 is bf16_is_fast()


def test_gradient_checkpointing_can_be_asked_for(tmp_path):
    args = build_args("sft", TrainConfig(sft={"gradient_checkpointing": True}), 0, tmp_path)
    assert args.activation_checkpointing is True


def test_demo_recipe_train_section_is_valid_for_trl():
    recipe = load_recipe(REPO / "recipes" / "demo.yaml")
    args = check_trl_sections(recipe.train, recipe.seed)
    assert type(args["sft"]).__name__ == "SFTConfig" and type(args["dpo"]).__name__ == "DPOConfig"
    assert (args["sft"].max_steps, args["sft"].learning_rate, args["sft"].max_length) == (
        36,
        5e-4,
        512,
    )
    assert (args["dpo"].max_steps, args["dpo"].beta, args["dpo"].eval_on_start) == (12, 0.1, False)
    assert args["sft"].seed == args["dpo"].seed == recipe.seed


def test_qlora_on_this_cpu_fails_with_what_is_missing(tiny_model_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tutorlm.train.sft import run_sft

    recipe = load_tiny_recipe(tiny_model_dir, tmp_path / "runs", qlora=True)
    write_run_data(recipe.run_dir)
    with pytest.raises(
        TrainError, match=r"train.qlora=true needs a CUDA GPU .* this machine has none"
    ):
        run_sft(recipe)
    assert not recipe.layout.merged("sft").exists()


def test_the_adapter_init_depends_on_the_seed_alone(tiny_model_dir):
    """Two runs with one seed start from the same LoRA weights, whatever random numbers
    were drawn before the adapter was made; another seed starts elsewhere."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from tutorlm.train.trainers import with_adapter

    def lora_a(seed: int, draws: int) -> torch.Tensor:
        torch.rand(draws)  # earlier code's random numbers
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        args = type("Args", (), {"seed": seed, "activation_checkpointing": False})()
        adapted = with_adapter(model, LoraConfig(r=4, target_modules=["q_proj"]), args)
        return next(p for n, p in adapted.named_parameters() if "lora_A" in n).detach()

    assert torch.equal(lora_a(3, draws=1), lora_a(3, draws=1000))
    assert not torch.equal(lora_a(3, draws=1), lora_a(4, draws=1))


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine where torch sees two bf16-capable CUDA GPUs (nothing is moved onto them).

    TrainingArguments sets up accelerate's process-wide ``PartialState`` on the fake
    GPU; it is put back afterwards so later tests in this process train on the CPU.
    """
    import torch
    from accelerate.state import PartialState

    saved = dict(PartialState._shared_state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    yield
    PartialState._shared_state.clear()
    PartialState._shared_state.update(saved)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_training_on_device_cpu_stays_on_the_cpu_beside_a_gpu(tmp_path, two_gpus, kind):
    from tutorlm.hardware import cpu_has_fast_bf16

    args = build_args(kind, TrainConfig(), 0, tmp_path, device="cpu")
    assert args.use_cpu is True
    assert args.bf16 is cpu_has_fast_bf16()  # the CPU's bf16, not the idle GPU's


def test_training_on_device_auto_uses_the_gpu_in_bf16(tmp_path, two_gpus):
    args = build_args("sft", TrainConfig(), 0, tmp_path, device="auto")
    assert args.use_cpu is False and args.bf16 is True


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_gpu_without_bf16_trains_in_fp16_mixed_precision(tmp_path, two_gpus, monkeypatch, kind):
    import torch

    from tutorlm.train.modeling import mixed_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a V100, a T4
    args = build_args(kind, TrainConfig(), 0, tmp_path, device="auto")
    assert (args.use_cpu, args.bf16, args.fp16) == (False, False, True)
    assert mixed_precision(args) is torch.float16


def test_fp16_training_loads_the_frozen_base_in_fp16_and_keeps_lora_in_fp32(tiny_model_dir):
    import torch
    from peft import LoraConfig

    from tutorlm.train.modeling import load_for_training
    from tutorlm.train.trainers import with_adapter

    model, _ = load_for_training(tiny_model_dir, half=torch.float16)
    args = type("Args", (), {"seed": 0, "fp16": True, "activation_checkpointing": False})()
    adapted = with_adapter(model, LoraConfig(r=4, target_modules=["q_proj"]), args)
    dtypes = {p.dtype for n, p in adapted.named_parameters() if "lora_" in n}
    frozen = {p.dtype for n, p in adapted.named_parameters() if "lora_" not in n}
    assert dtypes == {torch.float32} and frozen == {torch.float16}
    assert all(p.requires_grad for n, p in adapted.named_parameters() if "lora_" in n)


def test_a_gpu_index_the_trainer_cannot_take_names_cuda_visible_devices(tmp_path, two_gpus):
    with pytest.raises(TrainError, match="CUDA_VISIBLE_DEVICES=1 and device: cuda"):
        build_args("sft", TrainConfig(), 0, tmp_path, device="cuda:1")


def test_training_on_cuda_without_a_gpu_fails_before_anything_loads(tmp_path, monkeypatch):
    import torch

    from tutorlm.hardware import HardwareError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HardwareError, match="asks for a CUDA GPU"):
        check_trl_sections(TrainConfig(), 0, device="cuda")
