"""The stage runner: skip unchanged stages, re-run what a change touches, resume, --from/--only."""

from __future__ import annotations

import pytest

from tutorlm.errors import TutorlmError
from tutorlm.pipeline.runner import (
    PipelineState,
    Stage,
    StageOutcome,
    run_pipeline,
    select_stages,
)
from tutorlm.recipe import recipe_from_dict


def _stages(calls: list[str], fail_at: str | None = None) -> list[Stage]:
    def make(name):
        def run(recipe, state):
            if name == fail_at:
                raise KeyboardInterrupt  # as if the run were killed here
            calls.append(name)
            out = recipe.run_dir / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(name)
            return StageOutcome(summary=f"made {name}", outputs=[out], content=name)

        return run

    return [
        Stage("data", make("data"), settings=lambda r: r.seed),
        Stage("train", make("train"), settings=lambda r: r.model, after=("data",)),
        Stage("eval", make("eval"), settings=lambda r: None, after=("train",)),
    ]


@pytest.fixture
def recipe(tmp_path):
    return recipe_from_dict({"name": "t", "run_root": str(tmp_path), "model": "m0"})


def test_second_run_skips_everything(recipe):
    calls, lines = [], []
    run_pipeline(recipe, _stages(calls), echo=lines.append)
    run_pipeline(recipe, _stages(calls), echo=lines.append)
    assert calls == ["data", "train", "eval"]
    assert [line.split()[1] for line in lines] == ["done"] * 3 + ["skipped"] * 3
    assert "unchanged since last run: made train" in lines[4]


def test_changed_setting_reruns_that_stage_and_those_after(recipe):
    calls = []
    run_pipeline(recipe, _stages(calls), echo=lambda _: None)
    changed = recipe.model_copy(update={"model": "m1"})
    run_pipeline(changed, _stages(calls), echo=lambda _: None)
    assert calls == ["data", "train", "eval", "train", "eval"]


def test_interrupted_run_resumes_at_the_unfinished_stage(recipe):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe, _stages(calls, fail_at="train"), echo=lambda _: None)
    state = PipelineState.load(recipe.layout)
    assert (state.stages["data"]["status"], state.stages["train"]["status"]) == ("done", "running")
    run_pipeline(recipe, _stages(calls), echo=lambda _: None)
    assert calls == ["data", "train", "eval"]


def test_deleted_output_reruns_the_stage(recipe):
    calls = []
    run_pipeline(recipe, _stages(calls), echo=lambda _: None)
    (recipe.run_dir / "eval.txt").unlink()
    run_pipeline(recipe, _stages(calls), echo=lambda _: None)
    assert calls == ["data", "train", "eval", "eval"]


def test_from_and_only(recipe):
    calls = []
    run_pipeline(recipe, _stages(calls), echo=lambda _: None)
    run_pipeline(recipe, _stages(calls), start="train", echo=lambda _: None)
    run_pipeline(recipe, _stages(calls), only="data", echo=lambda _: None)
    assert calls == ["data", "train", "eval", "train", "eval", "data"]


def test_unknown_stage_is_named():
    with pytest.raises(TutorlmError, match="unknown stage 'trian'; stages are: data, train, eval"):
        select_stages(_stages([]), start="trian")
