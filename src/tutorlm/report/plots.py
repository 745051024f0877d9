"""Plots of a run that people would rather look at than read: training curves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (one JSON object per logging step); [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for index, row in enumerate(rows):
        if row.get(key) is None:
            continue
        steps.append(row.get("step", row.get("global_step", index + 1)))
        values.append(float(row[key]))
    return steps, values


@dataclass(frozen=True)
class Panel:
    """One panel of the training figure: its title and its lines.

    Attributes:
        title: what the panel shows (``DPO reward accuracy``).
        lines: label -> ``(steps, values)``; validation lines (``eval_*`` keys, the
            recipe's ``eval_strategy`` cadence) next to the training ones.
    """

    title: str
    lines: dict[str, tuple[list[float], list[float]]]


_PANELS = [
    ("SFT loss", "sft", "loss"),
    ("SFT learning rate", "sft", "learning_rate"),
    ("DPO loss", "dpo", "loss"),
    ("DPO reward accuracy", "dpo", "rewards/accuracies"),
    ("DPO reward margin", "dpo", "rewards/margins"),
    ("DPO learning rate", "dpo", "learning_rate"),
]


def training_panels(sft_rows: list[dict], dpo_rows: list[dict]) -> list[Panel]:
    """The panels that have data: each metric on training rows, and on validation
    rows (``eval_<metric>``) where the stage evaluated."""
    rows = {"sft": sft_rows, "dpo": dpo_rows}
    panels = []
    for title, stage, key in _PANELS:
        lines = {
            label: _series(rows[stage], name)
            for label, name in (("train", key), ("validation", f"eval_{key}"))
        }
        lines = {label: series for label, series in lines.items() if series[0]}
        if lines:
            panels.append(Panel(title, lines))
    return panels


def plot_training_curves(sft_rows: list[dict], dpo_rows: list[dict], out_png: Path) -> Path | None:
    """One figure: SFT loss and learning rate; DPO loss, reward accuracy and margins,
    with validation curves beside the training ones (:func:`training_panels`).

    Returns the PNG path, or None when there is nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = training_panels(sft_rows, dpo_rows)
    if not panels:
        return None
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=False):
        for label, (steps, values) in panel.lines.items():
            axis.plot(steps, values, marker="." if len(steps) < 40 else None, label=label)
        axis.set_title(panel.title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if panel.title == "DPO reward accuracy":
            axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
            axis.set_ylim(-0.02, 1.02)
        if len(axis.lines) > 1:
            axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=110)
    plt.close(figure)
    return out_png
