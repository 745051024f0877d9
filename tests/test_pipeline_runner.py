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


def _launched_stages(calls, who: int, together, fail_at: str | None = None):
    """data and report in the main process alone; train in every process, which (as
    DDP does) cannot finish until all of them are in it (``together``, a barrier)."""

    def make(name):
        def run(recipe, state):
            if name == fail_at:
                raise RuntimeError(f"{name} broke")
            if name == "train":
                together.wait(timeout=10)
            calls.append((name, who))
            out = recipe.run_dir / f"{name}.{who}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(name)
            return StageOutcome(summary=f"made {name}", outputs=[out], content=name)

        return run

    return [
        Stage("data", make("data"), settings=lambda r: r.seed),
        Stage(
            "train", make("train"), settings=lambda r: r.model, after=("data",), every_process=True
        ),
        Stage("report", make("report"), settings=lambda r: None, after=("train",)),
    ]


def _launch_two(recipe, fail_at=None):
    """The pipeline in a main process and a second one, as threads; their results."""
    import threading

    from tutorlm.pipeline.runner import Launch

    calls, lines, results = [], [], {}
    together = threading.Barrier(2)

    def process(index):
        try:
            results[index] = run_pipeline(
                recipe,
                _launched_stages(calls, index, together, fail_at),
                echo=lines.append,
                launch=Launch(2, index, "launch-1"),
                poll_seconds=0.01,
            )
        except Exception as error:  # noqa: BLE001 -- the test reads it
            results[index] = error

    threads = [threading.Thread(target=process, args=(i,)) for i in (1, 0)]  # follower first
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return calls, lines, results


def test_launched_processes_share_training_and_leave_the_rest_to_the_main_one(recipe):
    calls, lines, results = _launch_two(recipe)
    assert sorted(calls) == [("data", 0), ("report", 0), ("train", 0), ("train", 1)]
    assert [line.split()[0] for line in lines] == ["data", "train", "report"]  # main prints
    assert results[0].stages == results[1].stages  # the follower ends on the main's record
    assert {record["launch"] for record in results[0].stages.values()} == {"launch-1"}


def test_a_stage_the_main_process_fails_stops_the_waiting_one(recipe):
    calls, _, results = _launch_two(recipe, fail_at="data")
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[1], TutorlmError)
    assert "stage 'data' failed in the main process: RuntimeError: data broke" in str(results[1])
    assert calls == []
