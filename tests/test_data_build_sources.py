"""``tutorlm data build`` with hub presets (their fixture rows), annotated pairs, pinned
splits and free-form answers, and every data section the docs show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from data_support import small_recipe  # tests/ is on sys.path

from tutorlm.data.build import build_data
from tutorlm.data.formats import MCQARecord, read_records
from tutorlm.recipe import recipe_from_dict


def test_hub_fixtures_and_annotated_pairs_through_the_build(tmp_path):
    pairs = tmp_path / "student_pairs.jsonl"
    options = ["3", "4", "5", "6"]
    rows = [
        {
            "qid": "q1",
            "q": "What is 2+2?",
            "A": "The answer is B.",
            "B": "A",
            "overall": "A",
            "correctness": "A",
            "options": options,
        },
        {
            "qid": "q1",
            "q": "What is 2+2?",
            "A": "It is 5",
            "B": "(B) 4",
            "overall": "B",
            "correctness": "B",
            "options": options,
        },
        {
            "qid": "q2",
            "q": "Why is the sky blue?",
            "A": "Rayleigh scattering of sunlight.",
            "B": "Because of the ocean.",
            "overall": "A",
            "correctness": "A",
            "options": None,
        },
        {
            "qid": "q3",
            "q": "Is 7 prime?",
            "A": "Yes.",
            "B": "No.",
            "overall": "AB",
            "correctness": "A",
            "options": None,
        },
        {
            "qid": "q4",
            "q": "Boiling point of water at sea level?",
            "A": "90 C",
            "B": "80 C",
            "overall": "A",
            "correctness": "None",
            "options": None,
        },
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    columns = {
        "question": "q",
        "a": "A",
        "b": "B",
        "overall": "overall",
        "correctness": "correctness",
        "options": "options",
        "group": "qid",
    }
    student = {"type": "jsonl", "path": str(pairs), "shape": "annotated", "columns": columns}
    recipe = small_recipe(tmp_path)
    recipe["data"] = {
        "sft": {
            "sources": [
                {
                    "type": "hub",
                    "name": "se_sft",
                    "preset": "stackexchange_physics",
                    "fixture": True,
                    "best_answer_min_score": "epfllama",
                },
                {"type": "hub", "name": "arc_sft", "preset": "arc_easy", "fixture": True},
            ]
        },
        "prefs": {
            "split": {"train": 1.0},
            "sources": [
                {**student, "name": "students", "annotated": "probllms"},
                {
                    "type": "hub",
                    "name": "se_pairs",
                    "preset": "stackexchange_math",
                    "fixture": True,
                    "pairing": "probllms",
                },
            ],
        },
        "mcqa": {"split": {"train": 1.0}, "sources": [{**student, "name": "student_letters"}]},
    }
    manifest = build_data(recipe_from_dict(recipe), progress=False, log=None)
    sources = manifest["sources"]
    assert sources["se_sft"]["dropped"] == {"best_answer_min_score": 1}
    assert sources["students"]["dropped"] == {"annotated_tie": 1, "annotated_both_incorrect": 1}
    assert sources["student_letters"]["dropped"] == {
        "annotated_same_question": 1,  # q1's second pair: folded into its vote
        "annotated_not_mcqa": 3,
    }
    assert sources["se_pairs"]["kept"] == 1  # only question 101 has a >= 10 answer
    out = tmp_path / "small" / "data"
    letters = read_records(out / "mcqa.train.jsonl", "mcqa").records
    assert [(r.question, r.choices[r.answer], r.meta) for r in letters] == [
        ("What is 2+2?", "4", {"method": "majority_vote", "votes": 2})
    ]
    sft = {r.id: r for r in read_records(out / "sft.train.jsonl", "sft").records} | {
        r.id: r for r in read_records(out / "sft.val.jsonl", "sft").records
    }
    arc = sft["arc_sft-Mercury_7220990"].messages
    assert arc[0].content.endswith(
        "A. a leg muscle relaxing after exercise\nB. a bacterial "
        "population in the bloodstream\nC. several viral particles on "
        "the skin\nD. carbohydrates being digested in the stomach\nAnswer:"
    )
    assert arc[1].content == "B"


def test_every_yaml_block_of_the_docs_is_a_valid_data_section():
    import re

    text = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        recipe = recipe_from_dict({"name": "doc", **yaml.safe_load(block)})
        assert recipe.data.sections() or recipe.data.eval_sets


def test_a_pinned_source_goes_whole_to_its_split(tmp_path):
    recipe = small_recipe(tmp_path)
    prefs = recipe["data"]["prefs"]
    prefs["sources"][0]["to_split"] = "train"
    recipe["data"] = {"prefs": prefs}
    build_data(recipe_from_dict(recipe), progress=False, log=None)
    out = tmp_path / "small" / "data"
    by_split = {
        split: {p.source for p in read_records(out / f"prefs.{split}.jsonl", "preference").records}
        for split in ("train", "val", "test")
    }
    assert "champ_pairs" in by_split["train"]
    assert by_split["val"] == by_split["test"] == {"rg_pairs"}
    with pytest.raises(Exception, match="to_split 'val' is not a split of sft"):
        recipe_from_dict(
            {
                "name": "x",
                "data": {
                    "sft": {
                        "split": {"train": 1.0},
                        "sources": [{"type": "notes", "name": "n", "to_split": "val"}],
                    }
                },
            }
        )


def test_a_hub_recipe_builds_offline_from_preset_fixtures(tmp_path):
    import re

    text = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    zephyr = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", text, flags=re.S)[0])
    zephyr["data"]["prefs"]["sources"] = zephyr["data"]["prefs"]["sources"][1:]  # private file
    recipe = recipe_from_dict({"name": "zephyr", "run_root": str(tmp_path), **zephyr})
    recipe.data = recipe.data.with_hub_fixtures()
    manifest = build_data(recipe, progress=False, log=None)
    assert {s["read"] for s in manifest["sources"].values()} == {3}
    rows = {name: info["rows"] for name, info in manifest["outputs"].items()}
    assert sum(rows[f"sft.{s}.jsonl"] for s in ("train", "val")) == 27
    assert rows["sft.val.jsonl"] == 1  # row 0 of one dataset is not row 0 of another
    assert sum(rows[f"prefs.{s}.jsonl"] for s in ("train", "val")) == 27
    assert manifest["sources"]["lima"]["kept"] == 3
    bad = recipe_from_dict(
        {
            "name": "x",
            "data": {
                "sft": {
                    "sources": [
                        {
                            "type": "hub",
                            "name": "h",
                            "dataset": "a/b",
                            "shape": "qa",
                            "columns": {"question": "q", "answer": "a"},
                        }
                    ]
                }
            },
        }
    )
    with pytest.raises(ValueError, match="source 'h': no preset, so no fixture rows"):
        bad.data.with_hub_fixtures()


def test_free_form_answers_with_distractors_become_lettered_sft(tmp_path):
    """An SFT source with ``distractors`` trains the MCQA answer format: the question
    exactly as the evaluate stage asks it, answered with the letter alone."""
    from tutorlm.evaluate.mcqa import question_block

    recipe = recipe_from_dict(
        {
            "name": "lettered",
            "run_root": str(tmp_path),
            "data": {
                "sft": {
                    "split": {"train": 1.0},
                    "sources": [
                        {
                            "type": "reasoning_gym",
                            "name": "rg",
                            "generators": ["basic_arithmetic"],
                            "per_generator": 12,
                            "worked": False,
                            "distractors": "auto",
                        }
                    ],
                }
            },
        }
    )
    build_data(recipe, progress=False, log=None)
    records = read_records(tmp_path / "lettered" / "data" / "sft.train.jsonl", "sft").records
    assert len(records) == 12
    letters = [r.messages[-1].content for r in records]
    assert set(letters) <= set("ABCD") and len(set(letters)) > 1
    for record in records:
        user = record.messages[-2].content
        question, _, options = user.partition("\nA. ")
        choices = [line.split(". ", 1)[1] for line in ("A. " + options).splitlines()[:-1]]
        mc = MCQARecord(
            id="x",
            source="s",
            question=question,
            choices=choices,
            answer="ABCD".index(record.messages[-1].content),
        )
        assert user == question_block(mc)
