"""Every shipped recipe loads; unknown keys and bad values are named; overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tutorlm.recipe import RecipeError, load_recipe, parse_yaml, recipe_from_dict, save_resolved

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


def _alias_bomb(levels: int) -> str:
    """``levels`` nested lists of 9 aliases each: 9 ** levels values once expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: x\ndescription: ok\n" + _alias_bomb(9))
    with pytest.raises(RecipeError) as caught:
        load_recipe(bomb)
    assert str(caught.value) == (
        f"{bomb}: YAML aliases expand to more than 100,000 values (from line 8); "
        "refused as an alias bomb"
    )


def test_a_few_aliases_within_the_budget_still_work():
    assert parse_yaml("a: &x [1, 2]\nb: *x\nc: {<<: {k: 1}}\n") == {
        "a": [1, 2],
        "b": [1, 2],
        "c": {"k": 1},
    }
    assert len(parse_yaml(_alias_bomb(4))["l4"]) == 9


def test_a_self_referencing_alias_non_utf8_and_broken_recipes_are_one_line_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nsweep: &s\n  - *s\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value) == (
        f"{path}: a YAML alias refers to the value that contains it (line 2); "
        "the value would be infinite"
    )
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 9); save the recipe as UTF-8"
    path.write_bytes(b"\xef\xbb\xbfname: bom\n")
    assert load_recipe(path).name == "bom"
    path.write_text("name: x\ntrain: {beta: [0.1\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value) == (
        f"{path}: not valid YAML: expected ',' or ']', but got '<stream end>' (line 3, column 1)"
    )
    path.write_text("name: x\nseed: " + "[" * 2000 + "]" * 2000 + "\n")
    with pytest.raises(RecipeError, match="YAML nested too deeply to read"):
        load_recipe(path)


def test_overrides_and_sweep_values_are_read_by_the_same_guarded_reader():
    with pytest.raises(RecipeError, match="^override 'seed=&a \\[\\*a\\]': YAML: a YAML alias"):
        recipe_from_dict({"name": "x"}, ["seed=&a [*a]"])
