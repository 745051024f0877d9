"""The run layout, the stage contracts and the one reward-reference rule.

Each decision here used to be made in several places (the pipeline, the sweep, the
training fingerprint, the evaluation and quantization commands) and some copies
disagreed; these tests pin the one answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tutorlm.contract import CONTRACTS, contract, dpo_start, shareable, upstream, value_at
from tutorlm.evaluate.runner import recipe_tasks, reward_reference, run_model_label
from tutorlm.layout import RunLayout, tutor_commands
from tutorlm.pipeline.stages import pipeline_stages
from tutorlm.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_the_layout_names_every_path_of_a_run():
    layout = load_recipe(RECIPES / "demo.yaml", ["run_root=out"]).layout
    assert layout.run_dir == Path("out/demo")
    assert layout.models() == {
        "M0": "bundled:smollm2-135m-instruct",
        "M1": "out/demo/sft/merged",
        "M2": "out/demo/dpo/merged",
    }
    assert layout.data("mcqa.test.jsonl") == Path("out/demo/data/mcqa.test.jsonl")
    assert layout.eval_results("M2") == Path("out/demo/eval/m2/results.json")
    assert layout.metrics("dpo") == Path("out/demo/dpo/metrics.jsonl")
    assert layout.index == Path("out/demo/rag/index")
    assert layout.pipeline_record == Path("out/demo/pipeline.json")
    other = RunLayout(Path("out/demo-b"))
    assert other.relocate(layout.merged("sft"), layout) == Path("out/demo-b/sft/merged")


def test_recipe_keys_that_point_files_elsewhere_are_the_layout_too(tmp_path):
    overrides = ["train.sft_train_file=my/sft.jsonl", f"rag.index_dir={tmp_path / 'idx'}"]
    layout = load_recipe(RECIPES / "demo.yaml", overrides).layout
    assert layout.data("sft.train.jsonl") == Path("my/sft.jsonl")
    assert layout.data("sft.val.jsonl") == layout.data_dir / "sft.val.jsonl"
    assert layout.index == tmp_path / "idx"
    assert tutor_commands(layout.model("M2"), layout.index)["serve"] == (
        f"tutorlm serve --model runs/demo/dpo/merged --rag {tmp_path / 'idx'}"
    )


def test_final_model_is_the_last_one_trained(tmp_path):
    layout = RunLayout(tmp_path / "run", base_model="bundled:x")
    assert layout.final_model() == "bundled:x"
    layout.merged("sft").mkdir(parents=True)
    (layout.merged("sft") / "config.json").write_text("{}")
    assert layout.final_model() == str(layout.merged("sft"))
    layout.merged("dpo").mkdir(parents=True)
    assert layout.final_model() == str(layout.merged("sft"))  # no weights yet
    (layout.merged("dpo") / "config.json").write_text("{}")
    assert layout.final_model() == str(layout.merged("dpo"))


def test_a_stage_reads_the_keys_its_contract_declares():
    recipe = load_recipe(RECIPES / "demo.yaml").to_dict()
    sft = contract("sft").settings(recipe)
    assert "train.beta" not in sft and sft["train.sft"] == recipe["train"]["sft"]
    assert contract("dpo").settings(recipe)["train.beta"] == recipe["train"]["beta"]
    assert "eval.threads" not in contract("eval-m2").settings(recipe)
    assert contract("report").settings(recipe) == recipe
    assert value_at(recipe, "train.lora.r") == recipe["train"]["lora"]["r"]
    assert value_at(recipe, "train.nothing.here") is None
    with pytest.raises(KeyError, match="unknown stage 'dpp'"):
        contract("dpp")


def test_upstream_follows_every_arrow():
    assert upstream("data") == []
    assert upstream("eval-m2") == ["dpo", "data", "sft"]
    assert set(upstream("report")) == set(CONTRACTS) - {"report"}


def test_the_pipeline_is_the_contracts_in_order():
    recipe = load_recipe(RECIPES / "demo.yaml")
    stages = pipeline_stages()
    assert [stage.name for stage in stages] == list(CONTRACTS)
    dpo = next(stage for stage in stages if stage.name == "dpo")
    assert dpo.after == ("sft", "data")
    assert dpo.settings(recipe) == contract("dpo").settings(recipe.to_dict())


def test_which_stages_a_recipe_switches_on():
    on = {
        name: c.enabled(load_recipe(RECIPES / "probllms.yaml").to_dict())
        for name, c in CONTRACTS.items()
    }
    assert on["sft"] is False and on["dpo"] is True and on["eval-m1"] is False


def test_sharing_needs_equal_settings_upstream_too():
    base = load_recipe(RECIPES / "demo.yaml").to_dict()
    changed = load_recipe(RECIPES / "demo.yaml", ["train.sft.learning_rate=1e-5"]).to_dict()
    assert shareable(base, changed) == ["data", "eval-m0"]


def test_dpo_starts_from_m1_unless_told_or_without_sft():
    assert dpo_start(load_recipe(RECIPES / "demo.yaml").to_dict()) == "M1"
    assert dpo_start(load_recipe(RECIPES / "demo.yaml", ["train.dpo_start=m0"]).to_dict()) == "M0"
    assert dpo_start(load_recipe(RECIPES / "probllms.yaml").to_dict()) == "M0"


def test_one_rule_picks_the_reward_reference():
    demo = load_recipe(RECIPES / "demo.yaml")
    models = demo.layout.models()
    assert run_model_label(demo, models["M2"] + "/") == "M2"
    assert run_model_label(demo, "somebody/else") is None
    assert reward_reference(demo, models["M0"]) is None  # against itself every pair ties
    assert reward_reference(demo, models["M1"]) == models["M0"]
    assert reward_reference(demo, models["M2"]) == models["M1"]
    assert reward_reference(demo, "somebody/else") == models["M0"]
    from_m0 = load_recipe(RECIPES / "demo.yaml", ["train.dpo_start=m0"])
    assert reward_reference(from_m0, models["M2"]) == models["M0"]
    explicit = load_recipe(RECIPES / "demo.yaml", ["eval.reward_reference=ref/model"])
    assert reward_reference(explicit, models["M0"]) == "ref/model"
    itself = load_recipe(RECIPES / "demo.yaml", [f"eval.reward_reference={models['M0']}"])
    assert reward_reference(itself, models["M0"]) is None


def test_zephyrs_m0_has_no_reward_row():
    """ZEPHYR scores ``reward:epfl_test``, an eval-set task: M0 has no reference for it."""
    zephyr = load_recipe(RECIPES / "zephyr.yaml")
    kinds = [spec.kind for spec in recipe_tasks(zephyr)]
    assert "reward" in kinds
    assert reward_reference(zephyr, zephyr.layout.model("M0")) is None
    assert reward_reference(zephyr, zephyr.layout.model("M2")) == zephyr.layout.model("M1")


def test_run_eval_leaves_reward_tasks_out_where_there_is_no_reference(monkeypatch, tmp_path):
    """What the eval stage hands the task loop: M0 no reward task, M2 against M1."""
    import tutorlm.evaluate.runner as runner

    handed = {}

    def record(model, specs, settings, out_dir, **kwargs):
        handed[model] = ([spec.name for spec in specs], kwargs["reference"])
        return {}

    monkeypatch.setattr(runner, "run_tasks", record)
    zephyr = load_recipe(RECIPES / "zephyr.yaml", [f"run_root={tmp_path}"])
    m0, m1, m2 = (zephyr.layout.model(label) for label in ("M0", "M1", "M2"))
    runner.run_eval(zephyr, m0)
    runner.run_eval(zephyr, m2)
    tasks = list(zephyr.eval.tasks)
    assert handed[m0] == ([t for t in tasks if not t.startswith("reward")], None)
    assert handed[m2] == (tasks, m1)
