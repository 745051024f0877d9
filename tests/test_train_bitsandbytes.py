"""Recipes that need bitsandbytes fail before the data build when it is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tutorlm.cli import main
from tutorlm.recipe import load_recipe, recipe_from_dict
from tutorlm.train.runtime import (
    bitsandbytes_keys,
    cuda_only_keys,
    optim_needs_bitsandbytes,
    require_bitsandbytes,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def without_bitsandbytes(monkeypatch):
    """This machine as if bitsandbytes were not installed (whether or not it is)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else real(name, *args),
    )


def test_bitsandbytes_optimizers_are_those_transformers_builds_from_it():
    from transformers.trainer_optimizer import _BITSANDBYTES_OPTIMIZERS
    from transformers.training_args import OptimizerNames

    expected = {str(name.value) for name in _BITSANDBYTES_OPTIMIZERS}
    found = {str(name.value) for name in OptimizerNames if optim_needs_bitsandbytes(name.value)}
    assert found - expected <= {"galore_adamw_8bit", "galore_adamw_8bit_layerwise"}  # bnb too
    assert expected <= found
    assert not optim_needs_bitsandbytes("adamw_torch_8bit")  # torchao's


def test_keys_that_need_bitsandbytes_are_named_for_the_stages_that_run(monkeypatch):
    monkeypatch.setattr("tutorlm.hardware.auto_device", lambda: "cuda")
    recipe = recipe_from_dict(
        {
            "name": "r",
            "train": {"qlora": True, "dpo": {"optim": "paged_adamw_32bit"}},
            "quantize": {"methods": ["int8-weight", "bnb-nf4"]},
        }
    )
    assert bitsandbytes_keys(recipe) == [
        "train.qlora=true",
        "train.dpo.optim=paged_adamw_32bit",
        "quantize.methods: bnb-nf4",
    ]
    assert bitsandbytes_keys(recipe, ["quantize"]) == ["quantize.methods: bnb-nf4"]
    monkeypatch.setattr("tutorlm.hardware.auto_device", lambda: "cpu")
    assert bitsandbytes_keys(recipe, ["quantize"]) == []  # skipped as GPU-only on a CPU


def test_a_recipe_without_bitsandbytes_settings_needs_nothing(without_bitsandbytes):
    require_bitsandbytes(
        recipe_from_dict({"name": "r", "train": {"dpo": {"optim": "adamw_torch"}}})
    )


@pytest.fixture
def on_a_gpu(monkeypatch):
    """``device: auto`` resolving to a CUDA GPU."""
    monkeypatch.setattr("tutorlm.hardware.auto_device", lambda: "cuda")


@pytest.fixture
def on_a_cpu(monkeypatch):
    monkeypatch.setattr("tutorlm.hardware.auto_device", lambda: "cpu")


@pytest.mark.parametrize(
    ("machine", "says"),
    [
        (
            "on_a_gpu",
            "paged_adamw_32bit; quantize.methods: bnb-nf4; quantize.methods: bnb-int8: needs",
        ),
        ("on_a_cpu", "train.dpo.optim=paged_adamw_32bit: runs on a CUDA GPU only"),
    ],
)
def test_probllms_run_stops_before_the_data_build(
    tmp_path, capsys, without_bitsandbytes, request, machine, says
):
    request.getfixturevalue(machine)
    status = main(["run", str(REPO / "recipes" / "probllms.yaml"), f"run_root={tmp_path}"])
    assert status == 1
    error = capsys.readouterr().err
    assert says in error
    assert "pip install 'tutorlm[gpu]'" in error
    run_dir = load_recipe(REPO / "recipes" / "probllms.yaml", [f"run_root={tmp_path}"]).run_dir
    assert not (run_dir / "data").exists()
    assert not (run_dir / "pipeline.json").exists()


def test_train_command_stops_before_loading_anything(
    tmp_path, capsys, without_bitsandbytes, on_a_gpu
):
    recipe = REPO / "recipes" / "probllms.yaml"
    assert main(["train", "dpo", str(recipe), f"run_root={tmp_path}"]) == 1
    assert "train.dpo.optim=paged_adamw_32bit: needs the bitsandbytes" in capsys.readouterr().err


def test_smoke_settings_need_no_bitsandbytes(tmp_path, without_bitsandbytes):
    path, overrides = REPO / "recipes" / "probllms.yaml", [f"run_root={tmp_path}"]
    assert bitsandbytes_keys(load_recipe(path, overrides)) == ["train.dpo.optim=paged_adamw_32bit"]
    require_bitsandbytes(load_recipe(path, overrides, smoke=True))


def test_qlora_on_a_cpu_stops_before_the_data_build_even_with_bitsandbytes(
    tmp_path, capsys, on_a_cpu, monkeypatch
):
    real = importlib.util.find_spec
    monkeypatch.setattr(  # as if bitsandbytes were installed
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "bitsandbytes" else real(name, *a),
    )
    overrides = [f"run_root={tmp_path}", "train.qlora=true"]
    status = main(["run", str(REPO / "recipes" / "demo.yaml"), *overrides])
    assert status == 1
    error = capsys.readouterr().err
    assert "train.qlora=true: runs on a CUDA GPU only" in error
    assert "this run's device is cpu (device: auto)" in error
    assert not (load_recipe(REPO / "recipes" / "demo.yaml", overrides).run_dir / "data").exists()


def test_cuda_only_keys_follow_the_stages_that_run():
    recipe = recipe_from_dict(
        {"name": "r", "train": {"qlora": True, "sft": {"optim": "paged_adamw_8bit"}}}
    )
    assert cuda_only_keys(recipe) == ["train.qlora=true", "train.sft.optim=paged_adamw_8bit"]
    assert cuda_only_keys(recipe, ["quantize"]) == []
    plain = recipe_from_dict({"name": "r", "train": {"sft": {"optim": "adamw_bnb_8bit"}}})
    assert cuda_only_keys(plain) == []  # bitsandbytes' 8-bit AdamW is not paged
