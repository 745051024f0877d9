"""The device policy: one setting (recipe ``device``, ``--device``) decides where every
model of evaluation and serving runs, and a CUDA request without a GPU fails at once."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch
from eval_fakes import FakeLM, uniform_lm

from tutorlm.cli_flags import add_device_flag, device_overrides
from tutorlm.data.formats import PreferenceRecord
from tutorlm.evaluate.config import EvalConfig
from tutorlm.evaluate.reward import reward_accuracy
from tutorlm.evaluate.runner import float32_rechecker, run_eval, run_tasks
from tutorlm.evaluate.scorer import Scorer
from tutorlm.hardware import HardwareError, device_dtype
from tutorlm.recipe import RecipeError, recipe_from_dict

TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=2)


def _gpus(monkeypatch, count: int, *, bf16: bool = True) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: count > 0)
    monkeypatch.setattr("torch.cuda.device_count", lambda: count)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: bf16)


@pytest.fixture
def loads(monkeypatch):
    """Record every ``load_model`` call instead of loading: (spec, dtype, device)."""
    calls = []

    def fake_load_model(spec, *, dtype=None, online=None, device=None):
        calls.append((spec, dtype, device))
        return FakeLM(8), TOKENIZER

    monkeypatch.setattr("tutorlm.models.load_model", fake_load_model)
    return calls


def test_the_recipe_device_defaults_to_auto_and_checks_only_its_shape(monkeypatch):
    def no_torch():
        raise AssertionError("the recipe must not ask torch")

    monkeypatch.setattr("torch.cuda.is_available", no_torch)
    assert recipe_from_dict({"name": "r"}).device == "auto"
    assert recipe_from_dict({"name": "r"}, ["device=cuda:3"]).device == "cuda:3"
    assert recipe_from_dict({"name": "r", "device": " CPU "}).device == "cpu"
    with pytest.raises(RecipeError, match="device 'gpu' is not one of auto, cpu, cuda, cuda:N"):
        recipe_from_dict({"name": "r", "device": "gpu"})


@pytest.mark.parametrize(
    ("gpus", "bf16", "fast_cpu", "setting", "device", "dtype"),
    [
        (0, False, False, "auto", "cpu", torch.float32),
        (0, False, True, "auto", "cpu", torch.bfloat16),
        (1, True, False, "auto", "cuda", torch.bfloat16),
        (1, False, False, "auto", "cuda", torch.float16),
        (2, True, False, "cuda:1", "cuda:1", torch.bfloat16),
        (1, True, False, "cpu", "cpu", torch.float32),
    ],
)
def test_from_spec_loads_on_the_resolved_device_in_its_auto_dtype(
    monkeypatch, loads, gpus, bf16, fast_cpu, setting, device, dtype
):
    _gpus(monkeypatch, gpus, bf16=bf16)
    monkeypatch.setattr("tutorlm.hardware.cpu_has_fast_bf16", lambda flags=None: fast_cpu)
    Scorer.from_spec("some-model", device=setting)
    assert loads == [("some-model", dtype, device)]


def test_an_explicit_dtype_is_kept_on_any_device(monkeypatch):
    _gpus(monkeypatch, 1)
    assert device_dtype("float32", "cuda") is torch.float32
    assert device_dtype("float16", "cpu") is torch.float16
    assert device_dtype(None, "cuda") is None


def test_cuda_without_a_gpu_fails_before_the_model_loads(monkeypatch, loads):
    _gpus(monkeypatch, 0)
    with pytest.raises(HardwareError, match="asks for a CUDA GPU, but torch sees none"):
        Scorer.from_spec("some-model", device="cuda")
    assert loads == []


def test_run_tasks_checks_the_device_before_writing_anything(monkeypatch, tmp_path, loads):
    _gpus(monkeypatch, 0)
    out = tmp_path / "out"
    with pytest.raises(HardwareError, match="device 'cuda:0' asks for a CUDA GPU"):
        run_tasks("some-model", [], EvalConfig(), out, device="cuda:0")
    assert not out.exists()
    assert loads == []


def test_run_eval_passes_the_recipe_device(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        "tutorlm.evaluate.runner.run_tasks", lambda *a, **kwargs: seen.update(kwargs)
    )
    recipe = recipe_from_dict({"name": "r", "run_root": str(tmp_path), "device": "cuda:1"})
    run_eval(recipe, "some-model", tasks=[])
    assert seen["device"] == "cuda:1"


def test_the_reward_reference_loads_on_the_policy_device(monkeypatch, loads, smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    policy = Scorer(uniform_lm(len(tokenizer)), tokenizer)
    monkeypatch.setattr(Scorer, "device", property(lambda self: "cuda:1"))
    _gpus(monkeypatch, 2)

    def fake_load_model(spec, *, dtype=None, online=None, device=None):
        loads.append((spec, dtype, device))
        return uniform_lm(len(tokenizer)), tokenizer

    monkeypatch.setattr("tutorlm.models.load_model", fake_load_model)
    pair = PreferenceRecord(
        id="p0",
        source="s",
        prompt=[{"role": "user", "content": "Question?"}],
        chosen=[{"role": "assistant", "content": "yes"}],
        rejected=[{"role": "assistant", "content": "no"}],
    )
    reward_accuracy(policy, "reference-model", pairs=[pair], dtype="float32", resamples=0)
    assert loads == [("reference-model", torch.float32, "cuda:1")]


def test_the_float32_recheck_model_loads_on_the_scorer_device(monkeypatch, loads):
    scorer = Scorer(FakeLM(8), TOKENIZER, dtype=torch.bfloat16)
    monkeypatch.setattr(Scorer, "device", property(lambda self: "cuda:0"))
    _gpus(monkeypatch, 1)
    recheck = float32_rechecker("some-model", scorer)
    recheck()
    recheck()
    assert loads == [("some-model", torch.float32, "cuda:0")]


def test_load_causal_lm_moves_the_model_to_the_device(tiny_model_dir):
    from tutorlm.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.device.type for p in load_causal_lm(tiny_model_dir).parameters()} == {"cpu"}


def test_device_flag_becomes_a_recipe_override_only_when_given():
    parser = argparse.ArgumentParser()
    add_device_flag(parser)
    assert device_overrides(parser.parse_args([])) == []
    assert device_overrides(parser.parse_args(["--device", "cuda:1"])) == ['device="cuda:1"']
    recipe = recipe_from_dict(
        {"name": "r"}, device_overrides(parser.parse_args(["--device", "cpu"]))
    )
    assert recipe.device == "cpu"


def test_eval_commands_take_device(monkeypatch, tmp_path, capsys):
    from tutorlm.cli import main

    _gpus(monkeypatch, 0)
    argv = ["eval", "files", "--model", "m", "--out", str(tmp_path), "--perplexity", str(tmp_path)]
    assert main([*argv, "--device", "cuda"]) != 0
    assert (
        "error: device 'cuda' asks for a CUDA GPU, but torch sees none" in capsys.readouterr().err
    )


def test_serve_device_comes_from_the_flag_else_the_recipe(tmp_path):
    from tutorlm.serve.commands import resolve_settings

    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nrun_root: {tmp_path}\ndevice: cuda:1\n")
    args = SimpleNamespace(recipe=None, model=None, rag=None, chat_template=None, device=None)
    assert resolve_settings(args).device == "auto"
    args.recipe = str(path)
    assert resolve_settings(args).device == "cuda:1"
    args.device = "cpu"
    assert resolve_settings(args).device == "cpu"


def test_serving_cuda_without_a_gpu_fails_before_loading(monkeypatch):
    from tutorlm.serve.loading import load_serving_model

    _gpus(monkeypatch, 0)
    with pytest.raises(HardwareError, match="device 'cuda' asks for a CUDA GPU"):
        load_serving_model("no/such-model", device="cuda")


def test_the_embedder_refuses_cuda_without_a_gpu_before_loading(monkeypatch):
    from tutorlm.rag.embed import load_embedder

    _gpus(monkeypatch, 0)
    with pytest.raises(HardwareError, match="device 'cuda:0' asks for a CUDA GPU"):
        load_embedder("no/such-embedder", device="cuda:0")
