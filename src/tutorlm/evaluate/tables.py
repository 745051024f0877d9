"""Markdown tables of evaluation results: one model's, and several side by side.

The comparison follows ZEPHYR's Table 1: one row per model, one column per metric,
and here every accuracy carries its bootstrap 95 % interval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tutorlm.errors import TutorlmError


def _interval(data: dict | None, scale: float = 1.0) -> str:
    if not data:
        return "–"
    value, low, high = (data[key] * scale for key in ("value", "low", "high"))
    if low == high == value:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def task_metrics(name: str, entry: dict) -> list[tuple[str, str]]:
    """``(column, cell)`` pairs of one task's results, in display order."""
    kind = entry.get("kind")
    if kind == "mcqa":
        cells = [(f"{name} acc", _interval(entry["accuracy"]))]
        if entry.get("accuracy_norm"):
            cells.append((f"{name} acc_norm", _interval(entry["accuracy_norm"])))
        return cells
    if kind == "choice":
        return [
            (f"{name} acc", _interval(entry["accuracy"])),
            (f"{name} acc_norm", _interval(entry["accuracy_norm"])),
        ]
    if kind == "perplexity":
        return [(f"{name} ppl", f"{entry['value']:.3f}")]
    if kind == "reward":
        return [
            (f"{name} acc", _interval(entry["accuracy"])),
            (f"{name} ties", f"{entry['tie_rate']:.3f}"),
        ]
    if kind == "generation":
        cells = [
            ("BLEU-4", f"{entry['bleu4']:.2f}"),
            ("ROUGE-1", f"{entry['rouge1']:.4f}"),
            ("ROUGE-2", f"{entry['rouge2']:.4f}"),
            ("ROUGE-L", f"{entry['rougeL']:.4f}"),
        ]
        if entry.get("exact_match") is not None:
            cells.append(("exact match", f"{entry['exact_match']:.3f}"))
        return cells
    if kind == "tutor":
        return [(f"{name} rate", _interval(entry["rate"]))]
    return []


def _detail(entry: dict) -> str:
    kind = entry.get("kind")
    if kind == "mcqa":
        return f"{entry['prompt_format']}; predicted {entry['predicted_counts']}, gold {entry['gold_counts']}"
    if kind == "perplexity":
        return entry["definition"]
    if kind == "reward":
        return f"beta {entry['beta']}, margin {entry['mean_margin']:.4f}" + (
            f"; {entry['warning']}" if entry.get("warning") else ""
        )
    if kind == "tutor":
        return f"{entry['count']}/{entry['n']} {entry['counts']} ({entry['better']} is better)"
    return ""


def results_markdown(results: dict) -> str:
    """One model's results: a row per metric with n and how it was measured."""
    lines = [
        f"# Evaluation of {results['model_name']}",
        "",
        f"model `{results['model']}`, dtype {results.get('dtype', '?')}, {results['created']}",
        "",
        "| task | metric | value [95 % CI] | n | notes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, entry in results["tasks"].items():
        for column, cell in task_metrics(name, entry):
            metric = column.removeprefix(f"{name} ")
            lines.append(
                f"| {name} | {metric} | {cell} | {entry.get('n', entry.get('n_tokens', ''))} | {_detail(entry)} |"
            )
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"| {name} | skipped | – | – | {reason} |")
    return "\n".join(lines) + "\n"


def load_results(path: Path | str) -> dict:
    """``results.json`` from a file or a folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise TutorlmError(f"{path}: no results.json (run `tutorlm eval` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TutorlmError(f"{path}: not valid JSON ({error.msg})") from None


def compare_markdown(all_results: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """Models as rows, metrics as columns (ZEPHYR Table 1), intervals shown; "–" where absent."""
    columns: list[str] = []
    rows = []
    for index, results in enumerate(all_results):
        cells = {}
        for name, entry in results.get("tasks", {}).items():
            for column, cell in task_metrics(name, entry):
                cells[column] = cell
                if column not in columns:
                    columns.append(column)
        label = labels[index] if labels else results.get("model_name", f"model {index + 1}")
        rows.append((label, cells))
    header = "| model | " + " | ".join(columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 1)]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cells.get(c, "–") for c in columns) + " |")
    return "\n".join(lines) + "\n"
