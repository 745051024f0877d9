"""Run a recipe's stages in order, skipping those whose inputs have not changed.

Each stage has a *key*: the sha256 of its own recipe settings (the keys its
contract in :mod:`tutorlm.contract` declares) and the fingerprints of the stages
it reads from (which change with the content of what they wrote). The key and
the outcome of every finished stage are kept in ``<run_dir>/pipeline.json``
(written atomically after each stage). A stage whose key is recorded as done, and
whose outputs still exist, is skipped; so a run that was interrupted picks up
at the stage that did not finish, and a changed setting re-runs exactly the
stages downstream of it.

Under ``accelerate launch`` (several processes), every process walks the same
stages: those whose contract says ``every_process`` (training, evaluation) run in
all of them together; the others (data, quantize, rag, samples, report) run in the
main process alone while the rest wait for ``pipeline.json`` to record them done
under this launch's token. Waiting on the file, not on a collective barrier, means
a data build of hours trips no process-group timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tutorlm.contract import StageContract
from tutorlm.data.formats import atomic_write_text
from tutorlm.errors import TutorlmError
from tutorlm.layout import RunLayout
from tutorlm.recipe import Recipe
from tutorlm.train.runtime import require_bitsandbytes


@dataclass
class StageOutcome:
    """What a stage reports: a one-line summary, and where its outputs are."""

    summary: str
    outputs: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    content: str | None = None
    """A hash of what the stage produced, where cheap (e.g. the data files' sha256s).
    Stages downstream re-run when it changes; without it, whenever this stage re-runs."""


@dataclass(frozen=True)
class Launch:
    """This process among those a launcher started, and a token naming the launch.

    The token is drawn by the main process and shared with the others once, at the
    start; the main process writes it into every stage record it finishes, so the
    others can tell this launch's result from an earlier run's.
    """

    count: int = 1
    index: int = 0
    token: str = ""

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @classmethod
    def current(cls) -> Launch:
        from tutorlm.hardware import launched_processes

        count, index, _ = launched_processes()
        if count == 1:
            return cls()
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        PartialState()  # joins the launch's process group (training reuses it)
        token = [f"{time.time_ns()}-{os.getpid()}" if index == 0 else None]
        broadcast_object_list(token, from_process=0)
        return cls(count, index, str(token[0]))


@dataclass(frozen=True)
class Stage:
    """One step of a run.

    Attributes:
        name: the name used by ``--from`` / ``--only`` and in the summary.
        run: does the work; receives the recipe and the pipeline state.
        settings: the parts of the recipe this stage depends on (hashed).
        after: names of the stages whose outputs it reads.
        enabled: whether the recipe asks for this stage at all.
    """

    name: str
    run: Callable[[Recipe, PipelineState], StageOutcome]
    settings: Callable[[Recipe], Any]
    after: tuple[str, ...] = ()
    enabled: Callable[[Recipe], bool] = lambda recipe: True
    every_process: bool = False

    @classmethod
    def declared(cls, contract: StageContract, run: Callable) -> Stage:
        """A stage whose settings, upstream stages and switch come from its contract."""
        return cls(
            contract.name,
            run,
            settings=lambda recipe: contract.settings(recipe.to_dict()),
            after=contract.after,
            enabled=lambda recipe: contract.enabled(recipe.to_dict()),
            every_process=contract.every_process,
        )


@dataclass
class PipelineState:
    """The record of a run directory: what each stage did, with which key."""

    path: Path
    stages: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, layout: RunLayout) -> PipelineState:
        path = layout.pipeline_record
        stages = json.loads(path.read_text())["stages"] if path.is_file() else {}
        return cls(path=path, stages=stages)

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"stages": self.stages}, indent=2) + "\n")

    def outcome(self, name: str) -> dict:
        """The recorded outcome of a finished stage (for stages that read it)."""
        if self.stages.get(name, {}).get("status") != "done":
            raise TutorlmError(f"stage '{name}' has not run yet: run it first")
        return self.stages[name]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def stage_key(stage: Stage, recipe: Recipe, state: PipelineState) -> str:
    """Hash of the stage's settings and of what the stages it reads produced."""
    upstream = {name: state.stages.get(name, {}).get("fingerprint") for name in stage.after}
    return _digest({"stage": stage.name, "settings": stage.settings(recipe), "after": upstream})


def select_stages(
    stages: list[Stage], *, start: str | None = None, only: str | None = None
) -> list[str]:
    """Names of the stages to force-run for ``--from`` / ``--only``."""
    names = [stage.name for stage in stages]
    for wanted in (start, only):
        if wanted is not None and wanted not in names:
            raise TutorlmError(f"unknown stage '{wanted}'; stages are: {', '.join(names)}")
    if only is not None:
        return [only]
    if start is not None:
        return names[names.index(start) :]
    return []


def run_pipeline(
    recipe: Recipe,
    stages: list[Stage],
    *,
    start: str | None = None,
    only: str | None = None,
    echo: Callable[[str], None] = print,
    launch: Launch | None = None,
    poll_seconds: float = 2.0,
) -> PipelineState:
    """Run ``stages`` for ``recipe``; print one summary line per stage.

    Args:
        start: re-run this stage and every stage after it (``--from``).
        only: run just this stage (``--only``); its inputs must exist.
        launch: this process's place in a launch (default :meth:`Launch.current`);
            only the main process writes ``pipeline.json`` and prints.
        poll_seconds: how often a waiting process reads ``pipeline.json``.

    Raises:
        TrainError: before any stage runs, when the settings of the stages to run
            need bitsandbytes and it is not installed.
        TutorlmError: in a waiting process, when the main one failed the stage.
    """
    launch = launch or Launch.current()
    if not launch.is_main:
        echo = lambda line: None  # noqa: E731 -- the main process reports
    state = PipelineState.load(recipe.layout)
    forced = select_stages(stages, start=start, only=only)
    require_bitsandbytes(recipe, [only] if only is not None else [stage.name for stage in stages])
    width = max(len(stage.name) for stage in stages)
    for stage in stages:
        if only is not None and stage.name != only:
            continue
        if not stage.enabled(recipe):
            echo(f"{stage.name:<{width}}  off      (not in this recipe)")
            continue
        key = stage_key(stage, recipe, state)
        record = state.stages.get(stage.name, {})
        outputs_exist = all(Path(p).exists() for p in record.get("outputs", []))
        if (
            stage.name not in forced
            and record.get("status") == "done"
            and record.get("key") == key
            and outputs_exist
        ):
            echo(f"{stage.name:<{width}}  skipped  unchanged since last run: {record['summary']}")
            continue
        if not launch.is_main and not stage.every_process:
            state = _await_main(recipe.layout, stage.name, key, launch.token, poll_seconds)
            continue
        if launch.is_main:
            state.stages[stage.name] = {"status": "running", "key": key, "started": time.time()}
            state.save()
        started = time.perf_counter()
        try:
            outcome = stage.run(recipe, state)
        except BaseException as error:
            if launch.count > 1 and launch.is_main:  # the waiting processes stop too
                state.stages[stage.name] = {
                    "status": "failed",
                    "key": key,
                    "launch": launch.token,
                    "error": f"{type(error).__name__}: {error}",
                }
                state.save()
            raise
        seconds = time.perf_counter() - started
        if not launch.is_main:  # the main process's record (its fingerprint) is the one
            state = _await_main(recipe.layout, stage.name, key, launch.token, poll_seconds)
            continue
        state.stages[stage.name] = {
            "status": "done",
            "key": key,
            "fingerprint": _digest([key, outcome.content or time.time()]),
            "seconds": round(seconds, 1),
            "summary": outcome.summary,
            "outputs": [str(p) for p in outcome.outputs],
            "details": outcome.details,
            **({"launch": launch.token} if launch.count > 1 else {}),
        }
        state.save()
        where = f" -> {outcome.outputs[0]}" if outcome.outputs else ""
        echo(f"{stage.name:<{width}}  done     {seconds:6.1f} s  {outcome.summary}{where}")
    return state


def _await_main(
    layout: RunLayout, name: str, key: str, token: str, poll_seconds: float
) -> PipelineState:
    """The run's state once the main process has recorded stage ``name`` done (or
    failed) under this launch's ``token`` and ``key``."""
    while True:
        state = PipelineState.load(layout)
        record = state.stages.get(name, {})
        if record.get("launch") == token and record.get("key") == key:
            if record.get("status") == "done":
                return state
            if record.get("status") == "failed":
                raise TutorlmError(
                    f"stage '{name}' failed in the main process: {record.get('error')}"
                )
        time.sleep(poll_seconds)
