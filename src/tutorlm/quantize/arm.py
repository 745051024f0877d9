"""One row of the comparison: load one model, time it, then score it.

Run as ``python -m tutorlm.quantize.arm JOB.json RESULT.json`` so that every row
starts in a fresh process: the peak resident memory then belongs to that row
alone (a process's peak never goes down, and freed model pages are often not
returned to the system). The order inside a row is fixed: load (timed), weight
bytes, generation (timed), peak RSS read, and only then the accuracy tasks,
whose batched forward passes would otherwise dominate the memory figure.

A job is a JSON object:

``label``, ``path``, ``quantized`` (bool), ``dtype`` (float rows),
``generation`` (``prompt``, ``new_tokens``, ``repeats``), ``threads``,
``tasks`` (list of ``{name, kind, paths, limit}``), ``eval`` (the recipe's
``eval`` section), ``seed``, ``reference`` (reward reference spec),
``chat_template``, ``out_dir`` (predictions go there), ``device`` (the resolved
device every row of one comparison runs on; default ``cpu``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _load(job: dict):
    """Load the row's model; the time covers reading and building the model only.

    Python imports (transformers loads each architecture's code lazily, on first
    use) and the tokenizer are done before the clock starts: they cost the same
    for every row and would otherwise swamp the differences between formats.
    """
    import accelerate  # noqa: F401  (imported by the packed loader)
    import safetensors.torch  # noqa: F401
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tutorlm.models import load_causal_lm, load_tokenizer
    from tutorlm.quantize.saving import load_quantized

    config = AutoConfig.from_pretrained(job["path"], trust_remote_code=False)
    AutoModelForCausalLM._model_mapping[type(config)]  # noqa: B018  (imports the model's code)
    tokenizer = load_tokenizer(job["path"])
    device = job.get("device") or "cpu"
    started = time.perf_counter()
    if job["quantized"]:
        model, _ = load_quantized(job["path"], device=device)
    else:
        dtype = getattr(torch, job.get("dtype") or "float32")
        model = load_causal_lm(job["path"], dtype=dtype, device=device)
    return model, tokenizer, time.perf_counter() - started


def _run_task(task: dict, scorer, job: dict) -> dict:
    """One column of the row, scored exactly as ``tutorlm eval`` scores it, on the
    task's first ``limit`` items and never re-checked in fp32 (that would replace the
    precision under test)."""
    from tutorlm.evaluate.config import EvalConfig
    from tutorlm.evaluate.runner import TaskSpec, run_task

    settings = EvalConfig.model_validate(job["eval"]).model_copy(
        update={"max_questions": task.get("limit")}
    )
    spec = TaskSpec(task["name"], task["kind"], [Path(p) for p in task["paths"]])
    if task["kind"] == "tutor":
        from tutorlm.data.tutoring_config import TutoringSource

        spec.tasks = tuple(task["metrics"])
        spec.source = TutoringSource.model_validate(task["source"])
    result, _ = run_task(
        spec,
        scorer,
        settings,
        seed=job.get("seed", 0),
        reference=job.get("reference"),
        out_dir=Path(job["out_dir"]),
        predictions_name=f"predictions.{task['name']}.jsonl",
    )
    return result


def check_job(job: dict) -> None:
    """Fail early, before any heavy import, on a job that names no model or misses a field."""
    missing = [key for key in ("label", "path", "quantized", "out_dir") if key not in job]
    if missing:
        raise ValueError(f"job is missing field(s) {missing}")
    if not Path(job["path"]).exists():
        raise FileNotFoundError(f"job {job['label']!r}: model path {job['path']} does not exist")


def measure_row(job: dict, *, isolated: bool = True) -> dict:
    """Load, time and score one model as the job describes; returns the row's results."""
    check_job(job)
    import torch

    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.quantize.measure import measure_generation, peak_rss_bytes, weight_bytes

    if job.get("threads"):
        from tutorlm.hardware import apply_threads

        apply_threads(job["threads"])
    Path(job["out_dir"]).mkdir(parents=True, exist_ok=True)
    load_average = os.getloadavg()[0]
    model, tokenizer, load_seconds = _load(job)
    on_gpu = any(p.is_cuda for p in model.parameters())
    row: dict = {
        "label": job["label"],
        "path": job["path"],
        "device": job.get("device") or "cpu",
        "load_seconds": load_seconds,
        "weight_bytes": weight_bytes(model),
        "threads": torch.get_num_threads(),
        "load_average": load_average,
    }
    generation = job.get("generation") or {}
    speed = measure_generation(
        model,
        tokenizer,
        prompt=generation.get("prompt") or "Hello",
        new_tokens=generation.get("new_tokens", 64),
        repeats=generation.get("repeats", 3),
    )
    row["generation"] = speed.to_dict()
    row["peak_rss_bytes"] = peak_rss_bytes() if isolated else None
    row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated() if on_gpu else None
    if job.get("chat_template"):
        from tutorlm.templates import apply_template

        apply_template(tokenizer, job["chat_template"])
    scorer = Scorer(model, tokenizer, batch_size=job["eval"].get("batch_size", 8), dtype=None)
    row["tasks"] = {}
    for task in job.get("tasks", []):
        started = time.perf_counter()
        result = _run_task(task, scorer, job)
        if task["kind"] == "tutor":  # one generation pass, an entry per metric
            row["tasks"].update(result["tasks"])
            continue
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        row["tasks"][task["name"]] = result
    return row


def main(argv: list[str] | None = None) -> int:
    """``python -m tutorlm.quantize.arm JOB.json RESULT.json``."""
    from tutorlm.models import apply_offline_env

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m tutorlm.quantize.arm JOB.json RESULT.json", file=sys.stderr)
        return 2
    apply_offline_env()
    job = json.loads(Path(argv[0]).read_text())
    row = measure_row(job, isolated=True)
    Path(argv[1]).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
