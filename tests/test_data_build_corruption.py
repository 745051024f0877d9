"""The data build with rejected answers a model writes (``corrupt: model``): sampled
before generating, corrupted in bulk (one call per operation), budgets that follow the
chosen answer, and the same rows on every build. The model is a counting fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tutorlm.bulk import Generated
from tutorlm.data.build import build_data
from tutorlm.data.examples import DataError
from tutorlm.data.formats import read_records
from tutorlm.models import BUNDLED
from tutorlm.recipe import recipe_from_dict


def _generated_pairs_recipe(root: Path, count: int, duplicate_every: int = 0) -> dict:
    rows = root / "qa.jsonl"
    lines = []
    for i in range(20):
        n = i % duplicate_every if duplicate_every else i
        lines.append(json.dumps({"q": f"What is {n} + 1?", "a": f"{n} + 1 = {n + 1}."}))
    rows.write_text("\n".join(lines) + "\n")
    source = {
        "type": "jsonl",
        "name": "qa_pairs",
        "path": str(rows),
        "shape": "qa",
        "columns": {"question": "q", "answer": "a"},
        "corrupt": {"method": "model", "n_ops": 2, "ensure_wrong": False},
        "count": count,
        "to_split": "train",
    }
    return {
        "name": "generated",
        "seed": 3,
        "run_root": str(root),
        "data": {"prefs": {"split": "80/20", "sources": [source]}},
    }


class CountingGenerator:
    """Stands in for the corruption model's bulk generator: marks the answer of each
    prompt (the same answer gets the same corruption, as a greedy model would), counts
    the questions asked and the size of every bulk call. ``cut`` names questions whose
    generation runs out of its budget."""

    def __init__(self, cut: tuple[str, ...] = ()):
        self.questions: list[str] = []
        self.calls: list[int] = []
        self.budgets: list[list[int]] = []
        self.cut = cut

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts, sampling, *, max_new_tokens=None, desc=""):
        self.calls.append(len(prompts))
        self.budgets.append(list(max_new_tokens))
        out = []
        for prompt in prompts:
            user = prompt[-1]["content"]
            question = user.split("Question:\n")[1].split("\n\nCorrect answer:")[0]
            answer = user.split("Correct answer:\n")[1].split("\n\nReply with")[0]
            self.questions.append(question)
            reason = "length" if question in self.cut else "stop"
            out.append(Generated(f"{answer} [corrupted]", 3, reason))
        return out


@pytest.fixture
def fake_generator(monkeypatch):
    """The build opens this generator for the corruption model; the options it was
    opened with are in ``opened``."""
    import tutorlm.bulk

    generator = CountingGenerator()
    generator.opened = []

    def opener(spec, **options):
        generator.opened.append((spec, options))
        return generator

    monkeypatch.setattr(tutorlm.bulk, "open_generator", opener)
    return generator


@pytest.fixture
def counting_generator(fake_generator):
    return fake_generator.questions


def test_a_model_corrupts_only_the_answers_the_build_keeps(tmp_path, counting_generator):
    recipe = recipe_from_dict(_generated_pairs_recipe(tmp_path, count=5))
    manifest = build_data(recipe, progress=False, log=None)
    pairs = read_records(tmp_path / "generated" / "data" / "prefs.train.jsonl", "preference")
    assert len(pairs.records) == 5
    assert len(counting_generator) == 2 * 5  # two operations per kept answer, no more
    assert sorted(set(counting_generator)) == sorted(p.prompt[-1].content for p in pairs.records)
    stats = manifest["sources"]["qa_pairs"]
    assert (stats["read"], stats["kept"], stats["dropped"]) == (20, 5, {"count": 15})


def test_the_model_corrupts_every_kept_answer_in_one_bulk_call_per_operation(
    tmp_path, fake_generator
):
    data = _generated_pairs_recipe(tmp_path, count=5)
    data.update(device="cpu", generation={"backend": "transformers", "batch_size": 3})
    build_data(recipe_from_dict(data), progress=False, log=None)
    assert fake_generator.calls == [5, 5]  # each answer's first operation, then its second
    [(spec, options)] = fake_generator.opened  # opened once, with the recipe's settings
    assert spec == BUNDLED
    assert options["device"] == "cpu" and options["config"].batch_size == 3
    # budget: twice the chosen answer's words (the fake's tokens) plus 64, below 1024
    assert fake_generator.budgets[0] == [2 * 5 + 64] * 5  # "n + 1 = m." is 5 words


def test_a_generation_that_runs_out_of_its_budget_is_dropped_not_kept_cut(tmp_path, fake_generator):
    fake_generator.cut = ("What is 3 + 1?", "What is 7 + 1?")
    data = _generated_pairs_recipe(tmp_path, count=20)
    data["data"]["prefs"]["sources"][0].update(count=None, cap=20)
    manifest = build_data(recipe_from_dict(data), progress=False, log=None)
    stats = manifest["sources"]["qa_pairs"]
    assert stats["kept"] == 18 and stats["dropped"]["corruption_truncated"] == 2
    pairs = read_records(tmp_path / "generated" / "data" / "prefs.train.jsonl", "preference")
    asked = {p.prompt[-1].content for p in pairs.records}
    assert not asked & set(fake_generator.cut)
    kept = _generated_pairs_recipe(tmp_path, count=20)
    kept["data"]["prefs"]["sources"][0].update(count=None, cap=20)
    kept["data"]["prefs"]["sources"][0]["corrupt"]["over_budget"] = "keep"
    manifest = build_data(recipe_from_dict(kept), force=True, progress=False, log=None)
    assert manifest["sources"]["qa_pairs"]["kept"] == 20


def test_sampling_before_generating_still_fills_the_count_past_duplicates(
    tmp_path, counting_generator
):
    recipe = recipe_from_dict(_generated_pairs_recipe(tmp_path, count=4, duplicate_every=4))
    manifest = build_data(recipe, progress=False, log=None)
    stats = manifest["sources"]["qa_pairs"]
    assert stats["kept"] == 4
    visited = 20 - stats["dropped"]["count"]
    assert visited == 4 + stats["dropped"].get("duplicate", 0)
    assert len(counting_generator) == 2 * visited
    with pytest.raises(DataError, match="count 5 asked but only 4 rows remain"):
        build_data(
            recipe_from_dict(_generated_pairs_recipe(tmp_path, count=5, duplicate_every=4)),
            force=True,
            progress=False,
            log=None,
        )


def test_a_generated_source_is_sampled_the_same_way_on_every_build(tmp_path, counting_generator):
    first = build_data(
        recipe_from_dict(_generated_pairs_recipe(tmp_path, count=5)), progress=False, log=None
    )
    out = tmp_path / "generated" / "data" / "prefs.train.jsonl"
    before = out.read_bytes()
    counting_generator.clear()
    build_data(
        recipe_from_dict(_generated_pairs_recipe(tmp_path, count=5)),
        force=True,
        progress=False,
        log=None,
    )
    assert out.read_bytes() == before and first["outputs"]
