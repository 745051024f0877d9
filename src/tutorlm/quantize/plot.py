"""Accuracy against memory: the comparison as one picture."""

from __future__ import annotations

from pathlib import Path

from tutorlm.quantize.table import HEADLINE, MIB, headline, task_label


def plot_compare(summary: dict, path: Path) -> Path | None:
    """Write a PNG of accuracy (MCQA, perplexity) against weight memory; None without rows.

    One panel per column of the table: accuracies (MCQA, choice acc_norm, reward)
    with their 95 % intervals as error bars, and perplexities (lower is better). The
    x axis is weight MiB, the one memory figure every row has.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    if not rows:
        return None
    panels = [task for task in summary["tasks"] if task["kind"] in HEADLINE]
    panels += [task for task in summary["tasks"] if task["kind"] == "perplexity"]
    if not panels:
        panels = [{"name": "tokens/s", "kind": "speed"}]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for axis, task in zip(axes[0], panels, strict=True):
        kind = task["kind"]
        for row in rows:
            x = row["weight_bytes"] / MIB
            entry = row.get("tasks", {}).get(task["name"]) or {}
            acc = headline(row, task) if kind in HEADLINE else None
            if acc:
                axis.errorbar(
                    x,
                    acc["value"],
                    yerr=[[acc["value"] - acc["low"]], [acc["high"] - acc["value"]]],
                    fmt="o",
                    capsize=3,
                )
                y = acc["value"]
            elif kind == "perplexity" and entry.get("value"):
                y = entry["value"]
                axis.plot(x, y, "o")
            elif kind == "speed":
                y = row["generation"]["tokens_per_second"]
                axis.plot(x, y, "o")
            else:
                continue
            axis.annotate(
                row["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
        axis.set_xlabel("weights (MiB)")
        if kind == "speed":
            axis.set_ylabel("tokens/s")
        elif kind == "perplexity":
            axis.set_ylabel(f"perplexity ({task_label(task)}, lower is better)")
        else:
            measure = "acc_norm" if kind == "choice" else "accuracy"
            axis.set_ylabel(f"{task_label(task)} {measure}")
        axis.grid(alpha=0.3)
    figure.suptitle(f"Quantization of {Path(str(summary['model'])).name}", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
