"""``tutorlm sweep``: variants from a recipe or --set, shared upstream stages, one table.

The pipeline here is a list of fake stages with the real stages' names and
settings; each writes the files the table reads (metrics, eval results), so the
sweep's bookkeeping is checked exactly and in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tutorlm.cli import main
from tutorlm.contract import CONTRACTS
from tutorlm.pipeline.runner import Stage, StageOutcome
from tutorlm.pipeline.sweep import (
    SweepError,
    differing_keys,
    expand_variants,
    parse_set,
    run_sweep,
    shareable_stages,
    variants_from_sets,
)
from tutorlm.recipe import RecipeError, load_recipe


def fake_stages(calls: list[str], fail_when_beta: float | None = None) -> list[Stage]:
    """data -> sft -> dpo -> eval-m2, writing what the real stages write for the table."""

    def write(path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def data(recipe, state):
        calls.append(f"data:{recipe.name}")
        out = write(recipe.run_dir / "data" / "manifest.json", "{}")
        return StageOutcome("data built", [out], content="rows")

    def sft(recipe, state):
        calls.append(f"sft:{recipe.name}")
        lr = recipe.train.sft["learning_rate"]
        rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1000 * lr}, {"eval_loss": 0.5}]
        write(recipe.run_dir / "sft" / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        out = write(recipe.run_dir / "sft" / "merged" / "config.json", "{}")
        return StageOutcome("M1", [out.parent])

    def dpo(recipe, state):
        calls.append(f"dpo:{recipe.name}")
        if recipe.train.beta == fail_when_beta:
            raise RuntimeError("out of memory")
        rows = [{"step": 1, "loss": recipe.train.beta, "rewards/accuracies": 0.75}]
        write(recipe.run_dir / "dpo" / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        out = write(recipe.run_dir / "dpo" / "merged" / "config.json", "{}")
        return StageOutcome("M2", [out.parent])

    def eval_m2(recipe, state):
        calls.append(f"eval-m2:{recipe.name}")
        tasks = {
            "reward": {"kind": "reward", "accuracy": {"value": 0.5 + recipe.train.beta}},
            "choice:hellaswag": {"kind": "choice", "accuracy_norm": {"value": 0.25}},
        }
        results = json.dumps({"tasks": tasks})
        out = write(recipe.run_dir / "eval" / "m2" / "results.json", results)
        return StageOutcome("M2 scored", [out])

    def declared(name, run):  # the real stage's contract, switched on whatever the recipe
        settings = CONTRACTS[name].settings
        return Stage(name, run, lambda r: settings(r.to_dict()), after=CONTRACTS[name].after)

    return [
        declared("data", data),
        declared("sft", sft),
        declared("dpo", dpo),
        declared("eval-m2", eval_m2),
    ]


@pytest.fixture
def recipe_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.yaml"
    recipe = {
        "name": "tiny",
        "run_root": str(tmp_path / "runs"),
        "train": {
            "beta": 0.1,
            "prefs_val_file": str(tmp_path / "runs" / "tiny" / "data" / "prefs.test.jsonl"),
            "sft": {"learning_rate": 0.001},
        },
        "sweep": [
            {"name": "base", "description": "as written"},
            {"name": "beta0.4", "overrides": {"train.beta": 0.4}},
            {"name": "slow_lr", "overrides": {"train.sft.learning_rate": 0.0005}},
        ],
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_parse_set_reads_values_as_yaml():
    assert parse_set("train.beta=0.1,0.4") == ("train.beta", [0.1, 0.4])
    assert parse_set("train.sft.lr_scheduler_type=cosine,constant") == (
        "train.sft.lr_scheduler_type",
        ["cosine", "constant"],
    )
    assert parse_set("train.lora.target_modules=[q_proj],all-linear")[1] == [
        ["q_proj"],
        "all-linear",
    ]
    for bad in ("train.beta", "=1,2", "train.beta="):
        with pytest.raises(SweepError, match="expected key=value1,value2"):
            parse_set(bad)


def test_several_sets_make_their_product_with_readable_names():
    variants = variants_from_sets(
        ["train.beta=0.1,0.4", "train.sft.lr_scheduler_type=cosine,constant"]
    )
    assert [(v.name, v.overrides) for v in variants] == [
        (
            "beta0.1_lr_scheduler_typecosine",
            {"train.beta": 0.1, "train.sft.lr_scheduler_type": "cosine"},
        ),
        (
            "beta0.1_lr_scheduler_typeconstant",
            {"train.beta": 0.1, "train.sft.lr_scheduler_type": "constant"},
        ),
        (
            "beta0.4_lr_scheduler_typecosine",
            {"train.beta": 0.4, "train.sft.lr_scheduler_type": "cosine"},
        ),
        (
            "beta0.4_lr_scheduler_typeconstant",
            {"train.beta": 0.4, "train.sft.lr_scheduler_type": "constant"},
        ),
    ]


def test_variants_get_their_own_run_directory_and_paths(recipe_file, tmp_path):
    name, variants = expand_variants(recipe_file, overrides=["seed=3"])
    assert name == "tiny"
    assert [v.recipe.name for v in variants] == ["tiny-base", "tiny-beta0.4", "tiny-slow_lr"]
    second = variants[1].recipe
    assert (second.train.beta, second.seed, second.sweep) == (0.4, 3, [])
    assert second.train.prefs_val_file == str(
        tmp_path / "runs" / "tiny-beta0.4" / "data" / "prefs.test.jsonl"
    )
    only = expand_variants(recipe_file, only=["slow_lr"])[1]
    assert [v.name for v in only] == ["slow_lr"]
    with pytest.raises(SweepError, match=r"unknown variant\(s\) \['nope'\]; this sweep has: base"):
        expand_variants(recipe_file, only=["nope"])


def test_a_bad_override_names_its_variant(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"name": "b", "sweep": [{"name": "v", "overrides": {"train.bta": 1}}]})
    )
    with pytest.raises(RecipeError, match=r"(?s)variant v.*unknown key 'train.bta'.*'train.beta'"):
        expand_variants(path)
    sweep = [{"name": "v", "overrides": {"seed.x": 1}}]
    path.write_text(yaml.safe_dump({"name": "b", "seed": 1, "sweep": sweep}))
    with pytest.raises(SweepError, match=r"variant v\): override 'seed\.x': 'seed' is not a"):
        expand_variants(path)
    path.write_text(yaml.safe_dump({"name": "b"}))
    with pytest.raises(SweepError, match="no sweep variants"):
        expand_variants(path)


def test_which_stages_a_difference_leaves_shared():
    base = load_recipe("recipes/demo.yaml")

    def shared(*overrides):
        return shareable_stages(base, load_recipe("recipes/demo.yaml", list(overrides)))

    everything = list(CONTRACTS)
    assert shared() == everything
    # the report shows the whole recipe; threads and batch size change no other result
    assert shared("train.threads=1", "eval.batch_size=2") == everything[:-1]
    assert shared("train.beta=0.4", "train.dpo.learning_rate=1e-5") == [
        "data",
        "sft",
        "eval-m0",
        "eval-m1",
    ]
    assert shared("quantize.methods=[int8-dynamic]") == [
        n for n in everything if n not in ("quantize", "report")
    ]
    assert shared("eval.shots=1") == ["data", "sft", "dpo", "samples"]
    assert shared("train.sft.lr_scheduler_type=constant") == ["data", "eval-m0"]
    assert shared("train.lora.r=4") == ["data", "eval-m0"]
    assert shared("model=other/model") == []
    assert shared("data.seed=7") == []


def test_paths_inside_each_run_directory_are_not_differences(recipe_file):
    variants = expand_variants(recipe_file)[1]
    assert differing_keys(variants[0].recipe, variants[1].recipe) == ["train.beta"]
    assert differing_keys(variants[0].recipe, variants[2].recipe) == ["train.sft.learning_rate"]


def test_sweep_shares_upstream_stages_and_writes_one_table(recipe_file, tmp_path):
    calls, lines = [], []
    result = run_sweep(recipe_file, stages=fake_stages(calls), echo=lines.append)
    assert calls == [
        "data:tiny-base",
        "sft:tiny-base",
        "dpo:tiny-base",
        "eval-m2:tiny-base",
        "dpo:tiny-beta0.4",  # data and M1 copied from tiny-base
        "eval-m2:tiny-beta0.4",
        "sft:tiny-slow_lr",  # data copied; a new SFT learning rate re-trains M1
        "dpo:tiny-slow_lr",
        "eval-m2:tiny-slow_lr",
    ]
    assert "shared from variant base: data, sft" in lines
    assert "shared from variant base: data" in lines
    runs = tmp_path / "runs"
    record = json.loads((runs / "tiny-beta0.4" / "pipeline.json").read_text())["stages"]["sft"]
    assert record["shared_from"] == "tiny-base"
    assert record["outputs"] == [str(runs / "tiny-beta0.4" / "sft" / "merged")]
    assert (runs / "tiny-beta0.4" / "sft" / "merged" / "config.json").is_file()
    assert not (runs / "tiny-beta0.4" / "sft" / "merged").is_symlink()

    assert result.markdown == runs / "tiny-sweep" / "results.md"
    assert result.markdown.read_text().splitlines()[:6] == [
        "# Sweep of tiny (3 variants)",
        "",
        "| variant | overrides | SFT loss | SFT val loss | DPO loss | DPO train reward acc. "
        "| M2 reward acc | M2 choice:hellaswag acc_norm | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| base | – | 1.0000 | 0.5000 | 0.1000 | 0.7500 | 0.6000 | 0.2500 | done |",
        "| beta0.4 | `train.beta=0.4` | 1.0000 | 0.5000 | 0.4000 | 0.7500 | 0.9000 | 0.2500 | done |",
    ]
    saved = json.loads(result.json.read_text())
    assert [row["variant"] for row in saved["variants"]] == ["base", "beta0.4", "slow_lr"]
    assert saved["variants"][2]["sft_loss"] == 0.5
    assert saved["variants"][2]["overrides"] == {"train.sft.learning_rate": 0.0005}


def test_a_second_sweep_reuses_every_finished_stage(recipe_file):
    calls = []
    run_sweep(recipe_file, stages=fake_stages(calls), echo=lambda line: None)
    calls.clear()
    run_sweep(recipe_file, stages=fake_stages(calls), echo=lambda line: None)
    assert calls == []


def test_a_failed_variant_is_reported_and_the_others_still_run(recipe_file):
    calls = []
    result = run_sweep(
        recipe_file, stages=fake_stages(calls, fail_when_beta=0.4), echo=lambda _: None
    )
    assert result.failed == ["beta0.4"]
    assert [row["status"] for row in result.rows] == [
        "done",
        "failed: RuntimeError: out of memory",
        "done",
    ]
    assert "| beta0.4 |" in result.markdown.read_text()
    assert calls[-1] == "eval-m2:tiny-slow_lr"


def test_cli_lists_variants(recipe_file, capsys):
    assert main(["sweep", str(recipe_file), "--set", "train.beta=0.1,0.4", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "sweep tiny: 2 variants"
    assert "beta0.4" in out and "train.beta=0.4" in out


def test_every_shipped_sweep_expands_to_valid_recipes():
    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    swept = 0
    for path in recipes:
        if yaml.safe_load(path.read_text()).get("sweep"):
            name, variants = expand_variants(path)
            assert all(v.recipe.name == f"{name}-{v.name}" for v in variants)
            swept += 1
    assert swept >= 3


def test_sweep_values_are_read_as_the_recipe_reads_them(recipe_file):
    """``5e-4`` is a number in a recipe; a sweep's --set must not make it a string."""
    assert parse_set("train.sft.learning_rate=5e-4,1e-4") == (
        "train.sft.learning_rate",
        [5e-4, 1e-4],
    )
    calls = []
    sets = ["train.sft.learning_rate=5e-4,1e-4"]
    result = run_sweep(recipe_file, sets=sets, stages=fake_stages(calls), echo=lambda line: None)
    assert [row["status"] for row in result.rows] == ["done", "done"]
    assert [row["sft_loss"] for row in result.rows] == [pytest.approx(0.5), pytest.approx(0.1)]
