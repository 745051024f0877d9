"""The tutoring data and the tutor tasks wired into a recipe: the data build writes the
tutoring rows, ``tutorlm eval`` asks the held-out items in the served tutor's prompt."""

from __future__ import annotations

import json

import pytest

from tutorlm.data.build import build_data
from tutorlm.data.sources.tutoring_items import split_questions
from tutorlm.evaluate.runner import recipe_tasks, recipe_tutoring_source, run_eval
from tutorlm.recipe import recipe_from_dict

TUTORING = {
    "type": "tutoring",
    "name": "tutor_sft",
    "generators": ["basic_arithmetic", "gcd"],
    "per_generator": 2,
    "champ": 0,
}


@pytest.fixture
def recipe(tiny_model_dir, tmp_path):
    return recipe_from_dict(
        {
            "name": "tutorwire",
            "model": str(tiny_model_dir),
            "run_root": str(tmp_path),
            "device": "cpu",
            "data": {"sft": {"split": "90/10", "sources": [TUTORING]}},
            "eval": {"tasks": ["tutor"], "tutor_limit": 2, "tutor_max_new_tokens": 4},
        }
    )


def test_the_data_build_writes_the_tutoring_rows_and_counts_them(recipe):
    build_data(recipe)
    manifest = json.loads(recipe.layout.data_manifest.read_text())
    stats = manifest["sources"]["tutor_sft"]
    held_in = split_questions(recipe_tutoring_source(recipe), "train")
    # every training notes question, every unanswerable one, 2 x 2 problems twice
    assert stats["read"] == len(held_in["qa"]) + len(held_in["unanswerable"]) + 4 + 4
    assert stats["dropped"] == {}
    rows = [json.loads(line) for line in recipe.layout.data("sft.train.jsonl").open()]
    grounded = next(row for row in rows if row["id"].startswith("grounded-"))
    system, user, reply = grounded["messages"]
    assert system["role"] == "system" and "cite the notes" in system["content"]
    assert user["content"].startswith("Course notes:\n[1] (")
    assert "[" in reply["content"]


def test_eval_groups_the_tutor_tasks_into_one_pass(recipe):
    (spec,) = recipe_tasks(recipe, ["tutor:grounded", "tutor:hint_leakage"])
    assert (spec.name, spec.kind, spec.tasks) == (
        "tutor",
        "tutor",
        ("tutor:grounded", "tutor:hint_leakage"),
    )
    assert spec.source == recipe_tutoring_source(recipe)
    assert spec.source.name == "tutor_sft"


def test_tutor_tasks_run_in_the_eval_stage(recipe, tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    results = run_eval(recipe, tiny_model_dir, out_dir=out)
    expected = {
        "tutor:grounded",
        "tutor:citation_precision",
        "tutor:citation_correctness",
        "tutor:abstention",
        "tutor:hint_leakage",
        "tutor:explanation",
        "tutor:letter_collapse",
    }
    assert set(results["tasks"]) == expected
    for name in expected:
        entry = results["tasks"][name]
        assert entry["kind"] == "tutor" and entry["n"] <= 2
        rate = entry["rate"]
        assert rate["low"] <= rate["value"] <= rate["high"]
    written = json.loads((out / "results.json").read_text())
    assert set(written["tasks"]) == expected
    rows = [json.loads(line) for line in (out / "predictions.tutor-grounded.jsonl").open()]
    assert len(rows) == 2 and {"id", "reply", "verdict", "why"} <= set(rows[0])
