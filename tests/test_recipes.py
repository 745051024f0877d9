"""Every shipped recipe loads; unknown keys and bad values are named; overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tutorlm.recipe import RecipeError, load_recipe, recipe_from_dict, save_resolved

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_recipes_folder_has_the_demo():
    assert "demo.yaml" in [p.name for p in RECIPES]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe.run_dir == Path(recipe.run_root) / recipe.name


def test_unknown_top_level_key_names_the_nearest(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'sed' \(did you mean 'seed'\?\)"):
        recipe_from_dict({"name": "x", "sed": 3})


def test_unknown_key_in_a_section_is_rejected_with_its_path():
    with pytest.raises(RecipeError, match=r"unknown key 'data\.no_such_setting'"):
        recipe_from_dict({"name": "x", "data": {"no_such_setting": 1}})


def test_wrong_type_names_the_key():
    with pytest.raises(RecipeError, match=r"seed: Input should be a valid integer"):
        recipe_from_dict({"name": "x", "seed": "many"})


def test_dotted_overrides_are_parsed_as_yaml():
    recipe = recipe_from_dict({"name": "x", "seed": 1}, ["seed=7", "model=/tmp/m", "name=other"])
    assert (recipe.seed, recipe.model, recipe.name) == (7, "/tmp/m", "other")


def test_malformed_override_is_an_error():
    with pytest.raises(RecipeError, match="not of the form key=value"):
        recipe_from_dict({"name": "x"}, ["seed"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_resolved_recipe_is_saved_and_reloads_to_the_same_hash(tmp_path):
    recipe = recipe_from_dict({"name": "r1", "run_root": str(tmp_path), "seed": 5})
    saved = save_resolved(recipe)
    assert saved == tmp_path / "r1" / "recipe.yaml"
    assert saved.read_text().startswith(f"# resolved recipe, sha256 {recipe.hash()}")
    again = recipe_from_dict(yaml.safe_load(saved.read_text()))
    assert again.hash() == recipe.hash()
    assert recipe_from_dict({"name": "r1", "run_root": str(tmp_path), "seed": 6}).hash() != (
        recipe.hash()
    )


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ntrain:\n  sft: {learning_rate: 5e-4}\n  beta: 1e-1\n")
    recipe = load_recipe(path, ["train.dpo.learning_rate=2e-5", "name=v1e3"])
    assert recipe.train.sft["learning_rate"] == 0.0005
    assert recipe.train.dpo["learning_rate"] == 2e-5
    assert recipe.train.beta == 0.1
    assert recipe.name == "v1e3"


def test_override_into_a_value_names_the_override_and_the_part():
    with pytest.raises(RecipeError, match=r"override 'seed\.x=1': 'seed' is not a section"):
        recipe_from_dict({"name": "x", "seed": 1}, ["seed.x=1"])
