"""Run evaluation tasks for one model and write ``results.json``, ``results.md`` and predictions.

Two entry points share one loop:

- :func:`run_eval` — the recipe's tasks on the run's data files
  (``<run_dir>/data/...``), written under ``<run_dir>/eval/<model-name>/``;
- :func:`evaluate_files` — any files given directly (``tutorlm eval --model SPEC
  --mcqa FILE --out DIR``).

A task whose file is missing is skipped with a message naming the file and the
command that builds it; ``results.json`` lists it under ``skipped``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tutorlm.evaluate.config import EVAL_SET_TASK, TASKS, EvalConfig
from tutorlm.evaluate.tasks import TaskSpec, float32_rechecker, run_task
from tutorlm.hardware import process_device, resolve_device

MCQA_KINDS = {"mmlu_stem": "mcqa", "mcqa_test": "mcqa", "mcqa": "mcqa"}


GENERIC_DIR_NAMES = {"merged", "final", "model", "adapter", "best", "last"}


def model_label(spec: str | Path) -> str:
    """A folder-safe name for a model spec.

    ``bundled:x`` -> ``x``; ``org/m`` (hub) -> ``org--m``; a directory -> its name,
    prefixed by its parent's when the name says nothing (``runs/demo/sft/merged`` ->
    ``sft-merged``), so that M1 and M2 do not overwrite each other's results.
    """
    text = str(spec).rstrip("/")
    if text.startswith("bundled:"):
        return text.split(":", 1)[1]
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        generic = path.name in GENERIC_DIR_NAMES or path.name.startswith("checkpoint")
        return f"{path.parent.name}-{path.name}" if generic else path.name
    return text.replace("/", "--")


def run_model_label(recipe, model_spec) -> str | None:
    """``M0``, ``M1`` or ``M2`` when ``model_spec`` is one of the run's own models."""
    wanted = str(model_spec).rstrip("/")
    for label, spec in recipe.layout.models().items():
        if wanted == spec or (
            Path(wanted).exists() and Path(wanted).resolve() == Path(spec).resolve()
        ):
            return label
    return None


def reward_reference(recipe, model_spec) -> str | None:
    """The reference model of ``model_spec``'s implicit DPO reward, decided here only.

    ``eval.reward_reference`` when set; else the model a run's model was trained
    from: M1 against M0, M2 against where DPO started (M1, or M0; see
    :func:`tutorlm.contract.dpo_start`), M0 against nothing. A model from outside
    the run is measured against the recipe's base model. ``None`` (no reward) where
    the reference would be the model itself: every pair would tie.
    """
    from tutorlm.contract import dpo_start

    label = run_model_label(recipe, model_spec)
    reference = recipe.eval.reward_reference
    if reference is None:
        starts = {"M0": None, "M1": "M0", "M2": dpo_start(recipe.to_dict())}
        origin = starts[label] if label else "M0"
        reference = recipe.layout.model(origin) if origin else None
    if reference is None or run_model_label(recipe, reference) == (label or object()):
        return None
    return reference


def recipe_tasks(recipe, tasks: Sequence[str] | None = None) -> list[TaskSpec]:
    """The task specs of a recipe (its ``eval.tasks`` unless ``tasks`` is given)."""
    from tutorlm.evaluate.perplexity import bundled_notes_dir

    settings: EvalConfig = recipe.eval
    names = list(tasks) if tasks else list(settings.tasks)
    unknown = [name for name in names if name not in TASKS and not EVAL_SET_TASK.match(name)]
    if unknown:
        from tutorlm.evaluate.scorer import ScorerError

        raise ScorerError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    layout = recipe.layout
    build = f"tutorlm data build {recipe.source_path or 'RECIPE'}"
    specs = []
    from tutorlm.evaluate.tutor import TUTOR_TASKS

    tutor = [name for name in names if name in TUTOR_TASKS]
    if tutor:
        from tutorlm.data.sources.tutoring_items import assets_root

        # one pass of generation grades every tutor metric asked for
        source = recipe_tutoring_source(recipe)
        notes = assets_root(source.notes) / "notes"
        specs.append(TaskSpec("tutor", "tutor", [notes], "set the tutoring source's notes",
                              tasks=tuple(tutor), source=source))  # fmt: skip
    for name in names:
        if name in TUTOR_TASKS:
            continue
        if name == "mmlu_stem":
            specs.append(TaskSpec(name, "mcqa", [layout.data("mmlu_stem.jsonl")], build))
        elif name == "mcqa_test":
            specs.append(TaskSpec(name, "mcqa", [layout.data("mcqa.test.jsonl")], build))
        elif name == "reward":
            specs.append(TaskSpec(name, "reward", [layout.data("prefs.test.jsonl")], build))
        elif name == "perplexity_notes":
            paths = [Path(p) for p in settings.perplexity_files] or [bundled_notes_dir()]
            specs.append(TaskSpec(name, "perplexity", paths, "set eval.perplexity_files"))
        elif name == "generation":
            path = Path(settings.generation_file or layout.data("sft.val.jsonl"))
            hint = build if not settings.generation_file else "set eval.generation_file"
            specs.append(TaskSpec(name, "generation", [path], hint))
        elif name == "choice":
            paths = [Path(settings.choice_file)] if settings.choice_file else []
            specs.append(TaskSpec(name, "choice", paths, "set eval.choice_file"))
        else:  # <kind>:<eval set>, a file the data stage writes from data.eval_sets
            kind, eval_set = EVAL_SET_TASK.match(name).groups()
            specs.append(TaskSpec(name, kind, [layout.data(f"{eval_set}.jsonl")], build))
    return specs


def decoding_generator(model_spec, scorer, generation=None, *, chat_template=None, seed=0):
    """What the generating tasks (``generation``, ``tutor``) decode with: vLLM on the
    model spec when ``generation.backend`` says so, else None (the scorer's own model,
    in its dtype: batched prompts of hundreds of tokens are compute-bound, where bf16
    pays on a CPU with bf16 instructions as it does for scoring)."""
    if generation is None or generation.backend == "transformers":
        return None
    from tutorlm.bulk import open_generator

    return open_generator(
        model_spec,
        config=generation,
        device=str(scorer.device),
        chat_template=chat_template,
        seed=seed,
    )


def recipe_tutoring_source(recipe):
    """The recipe's ``tutoring`` data source (the first, SFT before preferences): the
    tutor tasks hold out what it trains on and retrieve as it does (its retrieval
    settings, else the recipe's ``rag`` section, as served). A recipe without one
    gets the defaults (the bundled notes and their split)."""
    from tutorlm.data.tutoring_config import TutoringSource

    for section in (recipe.data.sft, recipe.data.prefs):
        for source in section.sources if section is not None else ():
            if isinstance(source, TutoringSource):
                return source.retrieving_as(recipe.rag)
    return TutoringSource(type="tutoring", name="tutoring").retrieving_as(recipe.rag)


def missing_input(spec: TaskSpec) -> str | None:
    if not spec.paths:
        return f"{spec.name}: no input file configured ({spec.hint})"
    for path in spec.paths:
        if spec.kind == "tutor":
            if not path.is_dir() or not any(path.glob("*.md")):
                return f"{spec.name}: {path} holds no notes (.md); {spec.hint}"
        elif spec.kind == "perplexity" and path.is_dir():
            if not any(p.suffix in (".md", ".txt") for p in path.iterdir()):
                return f"{spec.name}: {path} holds no .md or .txt file"
        elif not path.is_file():
            return f"{spec.name}: {path} is missing; build it with `{spec.hint}`"
        elif path.stat().st_size == 0:
            return f"{spec.name}: {path} is empty (its sources are missing or left no rows)"
    return None


def run_tasks(
    model_spec,
    specs: Sequence[TaskSpec],
    settings: EvalConfig,
    out_dir: Path | str,
    *,
    seed: int = 0,
    reference=None,
    scorer=None,
    progress: bool = False,
    echo: Callable[[str], None] = lambda line: None,
    meta: dict | None = None,
    chat_template: str | None = None,
    device: str = "auto",
    generation=None,
) -> dict:
    """Run task specs with one model; write ``results.json`` and ``results.md`` in ``out_dir``.

    Args:
        model_spec: the model to evaluate (spec string, used for loading and naming).
        specs: what to run.
        settings: the ``eval`` settings.
        out_dir: where results go.
        seed: for bootstrap and few-shot draws.
        reference: the reward reference (spec, model or Scorer).
        scorer: an already loaded scorer to use instead of loading ``model_spec``.
        progress: show progress bars.
        echo: called with one human-readable line per task.
        meta: extra fields for ``results.json`` (recipe name and hash).
        chat_template: the recipe's ``chat_template`` (None keeps the model's own).
        device: where ``model_spec`` loads (the recipe's ``device``, see
            ``tutorlm.hardware.process_device``); checked before anything runs.
        generation: the recipe's ``generation`` block; with ``backend: vllm`` the
            generation tasks decode on vLLM (``tutorlm.bulk``), the rest on the scorer.

    Launched as several processes (``accelerate launch``, ``torchrun``), each loads
    the model on its own device and scores its share of every pass
    (``tutorlm.evaluate.parallel``); every process returns the same results, and
    only the main one writes files and echoes.
    """
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.evaluate.tables import results_markdown

    if scorer is None:
        if not settings.device_map:
            device = process_device(device)
        processes = _join(device, settings)
    else:
        processes = scorer.processes
    if not processes.is_main:
        echo, progress = (lambda line: None), False
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "model": str(model_spec),
        "model_name": model_label(model_spec),
        **(meta or {}),
        "settings": settings.model_dump(mode="json"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "out_dir": str(out_dir),
        "processes": processes.count,
        "tasks": {},
        "skipped": {},
    }
    runnable = []
    for spec in specs:
        problem = missing_input(spec)
        if problem:
            results["skipped"][spec.name] = problem
            echo(f"skipped {problem}")
        else:
            runnable.append(spec)
    if runnable:
        from tutorlm.hardware import apply_threads

        results["threads"] = apply_threads(settings.threads)
    if runnable and scorer is None:
        scorer = Scorer.from_spec(
            model_spec,
            dtype=settings.dtype,
            device=device,
            device_map=settings.device_map,
            max_memory=settings.max_memory,
            batch_size=settings.batch_size,
            progress=progress,
            processes=processes,
        )
    if scorer is not None and chat_template is not None:
        from tutorlm.templates import apply_template

        apply_template(scorer.tokenizer, chat_template)
    if scorer is not None:
        results["device"] = scorer.device
        if getattr(scorer.model, "hf_device_map", None):
            results["device_map"] = {k: str(v) for k, v in scorer.model.hf_device_map.items()}
        results["dtype"] = str(scorer.dtype).removeprefix("torch.")
        results["batch_size"] = scorer.batch_size
    recheck = float32_rechecker(model_spec, scorer) if scorer is not None else None
    single_mcqa = sum(spec.kind == "mcqa" for spec in runnable) == 1
    generator = None
    if scorer is not None and any(spec.kind in ("generation", "tutor") for spec in runnable):
        generator = decoding_generator(
            model_spec, scorer, generation, chat_template=chat_template, seed=seed
        )
    for spec in runnable:
        started = time.perf_counter()
        name = (
            "predictions.jsonl"
            if single_mcqa and spec.kind == "mcqa"
            else f"predictions.{spec.name}.jsonl"
        )
        entry, line = run_task(
            spec,
            scorer,
            settings,
            seed=seed,
            reference=reference,
            out_dir=out_dir,
            predictions_name=name,
            recheck=recheck,
            write=processes.is_main,
            generator=generator,
        )
        if spec.kind == "tutor":  # one generation pass, one entry per metric
            results["tasks"].update(entry["tasks"])
            results["skipped"].update(entry["skipped"])
            echo(f"tutor ({round(time.perf_counter() - started, 1)} s)\n  {line}")
            continue
        entry["file"] = ", ".join(str(p) for p in spec.paths)
        entry["wall_seconds"] = round(time.perf_counter() - started, 2)
        results["tasks"][spec.name] = entry
        echo(f"{spec.name:<18} {line}")
    if scorer is not None:  # halved where a pass ran out of memory, on any process
        results["batch_size"] = min(processes.gather(scorer.batch_size))
    if processes.is_main:
        text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
        (out_dir / "results.json").write_text(text)
        (out_dir / "results.md").write_text(results_markdown(results))
    processes.wait()  # the files are there when any process goes on to read them
    return results


def _join(device: str, settings: EvalConfig):
    """The processes scoring together (``tutorlm.evaluate.parallel``), after checking the
    device and that a model spread over devices runs in one process."""
    from tutorlm.evaluate.parallel import ParallelError, join_processes
    from tutorlm.hardware import launched_processes

    count = launched_processes()[0]
    if settings.device_map and count > 1:
        raise ParallelError(
            f"eval.device_map {settings.device_map!r} spreads one model over every GPU, so it "
            f"runs in one process, but {count} were launched; run it without "
            "`accelerate launch`, or leave device_map out to score on each GPU in parallel"
        )
    return join_processes(resolve_device(device))


def run_eval(
    recipe,
    model_spec,
    *,
    tasks: Sequence[str] | None = None,
    out_dir=None,
    reference=None,
    progress: bool = False,
    echo=None,
) -> dict:
    """Evaluate a model on a recipe's tasks; writes ``<run_dir>/eval/<model-name>/results.json``.

    Args:
        recipe: a loaded :class:`tutorlm.recipe.Recipe` (or a path to its YAML).
        model_spec: the model (spec string or directory).
        tasks: task names (default ``recipe.eval.tasks``).
        out_dir: where to write (default ``<run_dir>/eval/<model-name>``).
        reference: reference model of the reward tasks (default
            :func:`reward_reference`; without one they are left out).
        progress: show progress bars; echo: called with one line per task.

    Returns:
        The results dict also written to ``results.json``.
    """
    from tutorlm.recipe import load_recipe

    if isinstance(recipe, str | Path):
        recipe = load_recipe(recipe)
    out_dir = Path(out_dir) if out_dir else recipe.layout.eval_dir(model_label(model_spec))
    reference = reference or reward_reference(recipe, model_spec)
    specs = recipe_tasks(recipe, tasks)
    if reference is None:  # a model without a reference has no implicit reward
        specs = [spec for spec in specs if spec.kind != "reward"]
    return run_tasks(
        model_spec,
        specs,
        recipe.eval,
        out_dir,
        seed=recipe.seed,
        reference=reference,
        progress=progress,
        echo=echo or (lambda line: None),
        meta={"recipe": recipe.name, "recipe_hash": recipe.hash()},
        chat_template=recipe.chat_template,
        device=recipe.device,
        generation=recipe.generation,
    )


def evaluate_files(
    model_spec,
    out_dir,
    *,
    mcqa=None,
    prefs=None,
    reference=None,
    perplexity: Sequence = (),
    choice=None,
    generation=None,
    settings: EvalConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    echo=None,
    device: str = "auto",
) -> dict:
    """Evaluate a model on files given directly; MCQA predictions go to ``out_dir/predictions.jsonl``.

    ``device``: where the model and the reward reference run (``resolve_device``)."""
    settings = settings or EvalConfig()
    specs = []
    if mcqa:
        specs.append(TaskSpec("mcqa", "mcqa", [Path(mcqa)]))
    if prefs:
        specs.append(TaskSpec("reward", "reward", [Path(prefs)]))
    if perplexity:
        specs.append(TaskSpec("perplexity", "perplexity", [Path(p) for p in perplexity]))
    if choice:
        specs.append(TaskSpec("choice", "choice", [Path(choice)]))
    if generation:
        specs.append(TaskSpec("generation", "generation", [Path(generation)]))
    for spec in specs:
        for path in spec.paths:
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file")
    return run_tasks(
        model_spec,
        specs,
        settings,
        out_dir,
        seed=seed,
        reference=reference,
        progress=progress,
        echo=echo or (lambda line: None),
        device=device,
    )
