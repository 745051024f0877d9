"""The report's tutor section: the tutor tasks of M0, M1, M2 and the int8 M2 side by
side, and a few graded replies of each task, so a reader can audit the grader.

It reads what the eval stages and the quantize rows wrote (``results.json``, the
``predictions.tutor-*.jsonl`` verdicts); it measures nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from tutorlm.layout import MODEL_LABELS
from tutorlm.recipe import Recipe
from tutorlm.report.document import Section, markdown_table

AUDITED = 2
"""Replies shown per task and verdict (passed, failed)."""
REPLY_CHARS = 300
"""A shown reply is cut here: the JSONL files hold them whole."""


def _rate(entry: dict | None) -> str:
    if not entry:
        return "–"
    rate = entry["rate"]
    return f"{rate['value']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] ({entry['count']}/{entry['n']})"


def _short(text: str, limit: int = REPLY_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int8_row(recipe: Recipe) -> dict | None:
    path = recipe.layout.quantize_dir / "compare.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text()).get("rows", [])
    return next((r for r in rows if r.get("bits") == 8 and r.get("kind") == "quantized"), None)


def tutor_results(recipe: Recipe) -> dict[str, dict]:
    """``{column: {metric: entry}}`` for each evaluated model that has tutor tasks."""
    columns: dict[str, dict] = {}
    for label in MODEL_LABELS:
        path = recipe.layout.eval_results(label)
        if path.is_file():
            tasks = json.loads(path.read_text()).get("tasks", {})
            found = {name: entry for name, entry in tasks.items() if entry.get("kind") == "tutor"}
            if found:
                columns[label] = found
    int8 = _int8_row(recipe)
    if int8:
        found = {k: v for k, v in int8.get("tasks", {}).items() if k.startswith("tutor:")}
        if found:
            columns[f"{int8['label']} M2"] = found
    return columns


def _audit(folder: Path, metric: str) -> list[list[str]]:
    path = folder / f"predictions.tutor-{metric.removeprefix('tutor:')}.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    shown = []
    for verdict in (True, False):
        picked = [row for row in rows if row.get("verdict") is verdict][:AUDITED]
        for row in picked:
            question = next(
                (m["content"] for m in reversed(row.get("prompt", [])) if m["role"] == "user"),
                "",
            ).rsplit("Question:", 1)[-1]
            shown.append(
                [
                    metric.removeprefix("tutor:"),
                    "pass" if verdict else "fail",
                    _short(question, 120),
                    _short(row.get("reply", "")),
                    _short(row.get("why", ""), 160),
                ]
            )
    return shown


def tutor_section(recipe: Recipe) -> Section | None:
    """The tutor tasks table and audited replies of M2; None when no model has them."""
    columns = tutor_results(recipe)
    if not columns:
        return None
    metrics = list(dict.fromkeys(name for found in columns.values() for name in found))
    rows = []
    for name in metrics:
        entry = next(found[name] for found in columns.values() if name in found)
        rows.append(
            [
                name.removeprefix("tutor:"),
                *(_rate(found.get(name)) for found in columns.values()),
                f"{entry.get('better', 'higher')} is better",
            ]
        )
    text = (
        "Held-out tutoring items asked greedily in the served tutor's prompt (mode prompt, "
        "retrieved notes) and graded by rule; rate [bootstrap 95 % interval] (passed/graded). "
        'Rules and examples: `docs/evaluate.md`, "Tutor tasks".\n\n'
        + markdown_table(["task", *columns, ""], rows)
    )
    m2_folder = recipe.layout.eval_dir("M2")
    audited = [row for name in metrics for row in _audit(m2_folder, name)]
    if audited:
        text += (
            "\nA few of M2's graded replies per task (the first that passed and the first "
            f"that failed; every reply with its verdict and why is in `{m2_folder}`):\n\n"
            + markdown_table(["task", "verdict", "question", "M2's reply", "why"], audited)
        )
    return Section("Tutoring: M0, M1, M2 and int8 M2", text)
