"""The comparison as Markdown: one row per model, ratios against the fp32 row."""

from __future__ import annotations

MIB = 2**20


def reference_row(rows: list[dict]) -> dict | None:
    """The row ratios are taken against: fp32 if measured, else the first reference row."""
    for row in rows:
        if row.get("label") == "fp32":
            return row
    return next((row for row in rows if row.get("kind") == "reference"), None)


#: The figure each task kind is known by in a row: ``accuracy`` (MCQA, reward),
#: ``accuracy_norm`` (choice completion, HellaSwag's acc_norm) or the perplexity ``value``.
HEADLINE = {"mcqa": "accuracy", "reward": "accuracy", "choice": "accuracy_norm"}


def mcqa_tasks(summary: dict) -> list[str]:
    return [task["name"] for task in summary["tasks"] if task["kind"] == "mcqa"]


def accuracy_tasks(summary: dict) -> list[dict]:
    """The tasks whose column is an accuracy with its interval (MCQA, choice, reward)."""
    return [task for task in summary["tasks"] if task["kind"] in HEADLINE]


def task_label(task: dict) -> str:
    """A column's name: ``quantize.task_labels``, else the task's name (``notes`` for
    the bundled notes' perplexity)."""
    label = task.get("label") or task["name"]
    return "notes" if label == "perplexity_notes" else label


def headline(row: dict, task: dict) -> dict | None:
    """The row's interval for an accuracy task (``{value, low, high, n}``), or None."""
    entry = row.get("tasks", {}).get(task["name"]) or {}
    return entry.get(HEADLINE[task["kind"]])


def _perplexity(row: dict, task: str = "perplexity_notes") -> float | None:
    entry = row.get("tasks", {}).get(task) or {}
    return entry.get("value")


def _cell_interval(interval: dict | None) -> str:
    if not interval:
        return "-"
    return f"{interval['value']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _ratio(value, reference) -> str:
    return f"{value / reference:.2f}" if value is not None and reference else "-"


def compare_markdown(summary: dict) -> str:
    """The ``compare.md`` page of a comparison summary (see ``compare.run_quantize_compare``)."""
    rows = summary["rows"]
    reference = reference_row(rows) or {}
    machine = summary["machine"]
    scored = accuracy_tasks(summary)
    perplexities = [task for task in summary["tasks"] if task["kind"] == "perplexity"]
    header = [
        "row",
        "bits",
        "weights MiB",
        "x fp32",
        "peak RSS MiB",
        "load s",
        "tokens/s",
        "x fp32",
        "tokens/CPU-s",
        "x fp32",
        "TTFT ms",
        "device",
    ]
    for task in perplexities:
        header += [f"perplexity ({task_label(task)})", "ppl change"]
    for task in scored:
        measure = "acc_norm" if task["kind"] == "choice" else "accuracy"
        header += [f"{task_label(task)} {measure} [95 % CI]", "change (points)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    ref_bytes = reference.get("weight_bytes")
    ref_speed = (reference.get("generation") or {}).get("tokens_per_second")
    ref_cpu_speed = (reference.get("generation") or {}).get("tokens_per_cpu_second")
    for row in rows:
        speed = row["generation"]["tokens_per_second"]
        cpu_speed = row["generation"].get("tokens_per_cpu_second")
        rss = row.get("peak_gpu_bytes") or row.get("peak_rss_bytes")
        label = row["label"] if row.get("kind") != "baseline" else f"baseline: {row.get('model')}"
        cells = [
            label,
            str(row.get("bits", "-")),
            f"{row['weight_bytes'] / MIB:.1f}",
            _ratio(row["weight_bytes"], ref_bytes),
            f"{rss / MIB:.0f}" if rss else "-",
            f"{row['load_seconds']:.2f}",
            f"{speed:.1f}",
            _ratio(speed, ref_speed),
            f"{cpu_speed:.1f}" if cpu_speed else "-",
            _ratio(cpu_speed, ref_cpu_speed),
            f"{row['generation']['ttft_seconds'] * 1000:.0f}",
            row.get("device", "cpu"),
        ]
        for task in perplexities:
            ppl, ref_ppl = _perplexity(row, task["name"]), _perplexity(reference, task["name"])
            change = f"{(ppl / ref_ppl - 1) * 100:+.1f} %" if ppl and ref_ppl else "-"
            cells += [f"{ppl:.3f}" if ppl else "-", change]
        for task in scored:
            accuracy, ref_accuracy = headline(row, task), headline(reference, task)
            change = (
                f"{(accuracy['value'] - ref_accuracy['value']) * 100:+.1f}"
                if accuracy and ref_accuracy
                else "-"
            )
            cells += [_cell_interval(accuracy), change]
        lines.append("| " + " | ".join(cells) + " |")
    generation = rows[0]["generation"] if rows else {}
    notes = [
        f"Model `{summary['model']}`, {summary['created']}; {machine['cpu']}, {machine['cores']} cores"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
        + f", torch {machine['torch']}, {rows[0]['threads'] if rows else '?'} threads.",
        "",
        f"- Device: every row ran on `{summary.get('device', 'cpu')}`, the reference rows "
        "included, so each ratio compares like with like.",
        "- Weights: bytes of every parameter and persistent buffer, each storage once "
        "(tied embedding / output layer once). Peak RSS: the row's own process after "
        "loading and generating, before any scoring"
        + (
            ""
            if summary["settings"].get("isolate", True)
            else " (not measured: rows shared one process)"
        )
        + ".",
    ]
    if generation:
        notes.append(
            f"- Generation: greedy, batch 1, {generation['new_tokens']} new tokens after a "
            f"{generation['prompt_tokens']}-token chat prompt, median of "
            f"{len(generation['runs'])} runs; TTFT = one-token generation; tokens/CPU-s divides by "
            "the process's CPU time (steadier than wall time on a loaded machine). Rows run one after "
            "another on a shared machine: load averages at each row's start were "
            + ", ".join(f"{row['label']} {row['load_average']:.1f}" for row in rows)
            + "."
        )
    notes += [_task_note(summary, rows, task) for task in summary["tasks"]]
    for name, reason in summary.get("skipped_rows", {}).items():
        notes.append(f"- Not measured: {name}: {reason}")
    for name, reason in summary.get("skipped_tasks", {}).items():
        notes.append(f"- Column left out: {name}: {reason}")
    title = f"# Quantization: accuracy, memory and speed of `{summary['model']}`\n\n"
    return title + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _task_entry(rows: list[dict], task: str) -> dict | None:
    return next((row["tasks"][task] for row in rows if task in row.get("tasks", {})), None)


def _task_note(summary: dict, rows: list[dict], task: dict) -> str:
    """One line saying how a column was computed: files, count, scoring, reference."""
    entry = _task_entry(rows, task["name"]) or {}
    files = ", ".join(f"`{path}`" for path in task["paths"])
    label = task_label(task)
    if task["kind"] == "perplexity":
        return f"- Perplexity ({label}): {entry.get('definition', '')}; {files}."
    if task["kind"] == "mcqa":
        return (
            f"- {label}: {entry.get('n', '?')} questions from {files}, "
            f"{entry.get('method', '')} scoring, {entry.get('shots', 0)}-shot"
            + (", chat template" if entry.get("chat") else "")
            + "; 95 % bootstrap interval."
        )
    if task["kind"] == "tutor":
        cells = []
        for metric in task.get("metrics", []):
            rates = [
                f"{row['label']} {row['tasks'][metric]['rate']['value']:.3f}"
                for row in rows
                if metric in row.get("tasks", {})
            ]
            if rates:
                cells.append(f"{metric}: {', '.join(rates)}")
        return (
            "- Tutor tasks (held-out tutoring items in the served tutor's prompt, greedy; "
            "per-item verdicts in each row's `predictions.tutor-*.jsonl`): "
            + ("; ".join(cells) or "not run")
            + "."
        )
    if task["kind"] == "choice":
        return (
            f"- {label}: {entry.get('n', '?')} items from {files}, choice completion "
            "(acc_norm: log-likelihood per character of each ending); 95 % bootstrap interval."
        )
    references = sorted({str(row.get("reference")) for row in rows if task["name"] in row["tasks"]})
    against = ", ".join(f"`{ref}`" for ref in references) or f"`{summary.get('reference', '')}`"
    return (
        f"- {label}: implicit DPO reward accuracy on {(entry.get('accuracy') or {}).get('n', '?')} "
        f"pairs from {files} against {against} (the model each row's model was trained from: "
        "`evaluate.runner.reward_reference`)."
    )
