"""The ``train`` recipe section: tutorlm's keys, TRL's pass-through sections, hardware choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_support import load_tiny_recipe, write_run_data

from tutorlm.recipe import RecipeError, load_recipe, recipe_from_dict
from tutorlm.train.config import TrainConfig
from tutorlm.train.runtime import (
    TrainError,
    bf16_is_fast,
    cores_busy_between,
    cpu_flags,
    cpu_has_fast_bf16,
    cpu_times,
    thread_count,
)
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
    check_trl_sections(recipe.train, recipe.seed)


def test_cpu_flags_decide_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_fast_bf16(cpu_flags(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_fast_bf16(cpu_flags(info))
    assert cpu_flags(tmp_path / "missing") == set()


def test_thread_count_shares_cores_and_leaves_busy_ones(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    busy = {"cores": 0.3}
    monkeypatch.setattr("tutorlm.train.runtime.busy_cores_elsewhere", lambda: busy["cores"])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert thread_count("auto") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert thread_count("auto") == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert thread_count("auto") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    busy["cores"] = 2.6  # three cores busy elsewhere
    assert thread_count("auto") == 1
    busy["cores"] = 14.0
    assert thread_count("auto") == 1
    busy["cores"] = 1.4
    assert thread_count("auto") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    busy["cores"] = 0.0
    assert thread_count("auto") == 3
    assert thread_count(5) == 5


def test_busy_cores_count_other_processes_not_this_one(tmp_path):
    def sample(user, idle, own_ticks):
        stat = tmp_path / "stat"
        stat.write_text(
            f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0\n"
        )
        own = tmp_path / "self"
        own.write_text(f"42 (python (x)) R 1 2 3 4 5 6 7 8 9 10 {own_ticks} 0 0 0\n")
        return cpu_times(stat, own)

    first = sample(user=1000, idle=5000, own_ticks=100)
    assert first == (1000, 6000, 2, 100)
    # 100 ticks per CPU pass: 150 busy ticks, 100 of them this process's own
    second = sample(user=1150, idle=5050, own_ticks=200)
    assert cores_busy_between(first, second) == pytest.approx(0.5)
    # all busy time was this process's: nothing elsewhere
    third = sample(user=1300, idle=5100, own_ticks=350)
    assert cores_busy_between(second, third) == 0.0
    assert cpu_times(tmp_path / "missing", tmp_path / "self") is None


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
    assert not (recipe.run_dir / "sft" / "merged").exists()
