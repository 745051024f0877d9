"""The report of a run: every stage's figures, read from the files the stages wrote.

Nothing here measures anything: each section reads an output of a stage
(``data/manifest.json``, ``*/metrics.jsonl``, ``eval/*/results.json``,
``quantize/compare.md``, ``rag/ablation.md``, ``samples.json``) and says so when a
stage did not run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tutorlm.data.formats import atomic_write_text
from tutorlm.layout import MODEL_LABELS, tutor_commands
from tutorlm.pipeline.runner import PipelineState
from tutorlm.pipeline.tutor_report import tutor_section
from tutorlm.recipe import Recipe
from tutorlm.report.document import Figure, Section, markdown_table, write_report
from tutorlm.report.plots import plot_training_curves, read_metrics


def _missing(what: str, stage: str) -> str:
    return f"*Not available: {what} (stage `{stage}` did not run in this recipe).*\n"


def _overview(recipe: Recipe, state: PipelineState) -> Section:
    rows = [
        [name, f"{info.get('seconds', 0):.1f}", info.get("summary", info.get("status", ""))]
        for name, info in state.stages.items()
        if name != "report"
    ]
    total = sum(info.get("seconds", 0) for info in state.stages.values())
    text = (
        f"Recipe `{recipe.name}` ({recipe.description or 'no description'}), base model "
        f"`{recipe.model}`, seed {recipe.seed}, recipe sha256 `{recipe.hash()[:12]}`. "
        f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n"
        + markdown_table(["stage", "seconds", "what it did"], rows)
        + f"\nTotal time of the stages: {total:.0f} s.\n"
    )
    return Section("Run", text)


def _data(recipe: Recipe) -> Section:
    path = recipe.layout.data_manifest
    if not path.is_file():
        return Section("Data", _missing("the data manifest", "data"))
    manifest = json.loads(path.read_text())
    sources = [
        [
            info["section"],
            name,
            info["read"],
            info["kept"],
            ", ".join(f"{rule} {n}" for rule, n in info["dropped"].items()) or "–",
        ]
        for name, info in manifest["sources"].items()
    ]
    files = [
        [name, info["kind"], info["rows"], "eval" if info["eval"] else "train", info["sha256"][:12]]
        for name, info in manifest["outputs"].items()
    ]
    text = (
        markdown_table(["output", "source", "read", "kept", "dropped by rule"], sources)
        + "\n"
        + markdown_table(["file", "kind", "rows", "use", "sha256"], files)
        + f"\nEval sets kept out of training (13-gram decontamination): "
        f"{', '.join(manifest['eval_sets']) or 'none'}.\n"
    )
    missing = manifest.get("missing") or {}
    if missing:
        listed = ", ".join(f"`{name}` ({path})" for name, path in sorted(missing.items()))
        text += f"\n**Optional sources not found, so not in this run**: {listed}.\n"
    return Section("Data", text)


def _training(recipe: Recipe) -> Section:
    layout = recipe.layout
    sft, dpo = read_metrics(layout.metrics("sft")), read_metrics(layout.metrics("dpo"))
    png = plot_training_curves(sft, dpo, layout.report_files / "training.png")
    if png is None:
        return Section("Training", _missing("training metrics", "sft/dpo"))
    rows = []
    for name, metrics in (("SFT", sft), ("DPO", dpo)):
        logged = [row for row in metrics if "loss" in row]
        evals = [row for row in metrics if "eval_loss" in row]
        if logged:
            first, last = logged[0], logged[-1]
            rows.append(
                [
                    name,
                    len(logged),
                    first["loss"],
                    last["loss"],
                    last.get("rewards/accuracies"),
                    last.get("rewards/margins"),
                    evals[0]["eval_loss"] if evals else None,
                    evals[-1]["eval_loss"] if evals else None,
                    evals[-1].get("eval_rewards/accuracies") if evals else None,
                ]
            )
    headers = ["stage", "logged steps", "first loss", "last loss", "reward acc.", "margin"]
    text = markdown_table([*headers, "first val. loss", "last val. loss", "val. reward acc."], rows)
    text += (
        "\nValidation figures come from the validation files, evaluated before training, at "
        "the recipe's `eval_strategy` / `eval_steps` and after training; – where a stage had "
        "no validation file.\n"
    )
    return Section(
        "Training", text, [Figure(png, "Training and validation curves of M1 (SFT) and M2 (DPO)")]
    )


def _evaluation(recipe: Recipe) -> Section:
    from tutorlm.evaluate.tables import compare_markdown, load_results

    found, labels = [], []
    for label in MODEL_LABELS:
        path = recipe.layout.eval_results(label)
        if path.is_file():
            found.append(load_results(path))
            labels.append(f"{label} ({'base' if label == 'M0' else 'trained'})")
    if not found:
        return Section("Evaluation", _missing("evaluation results", "eval-m*"))
    for results in found:  # the tutor tasks have a section of their own
        results["tasks"] = {
            name: entry for name, entry in results["tasks"].items() if entry.get("kind") != "tutor"
        }
    text = (
        "Every accuracy with its bootstrap 95 % interval; definitions in `docs/evaluate.md`.\n\n"
        + compare_markdown(found, [label.split()[0] for label in labels])
    )
    return Section("Evaluation: M0, M1, M2", text)


def _judge(recipe: Recipe) -> Section | None:
    """The judge's verdicts, when the recipe configures a judge: M2 against M0 (the
    M2 evaluation stage), and each model's answers with notes against without (the
    rag stage)."""
    layout = recipe.layout
    found = [("M2 against M0", layout.eval_dir("judge-m2-m0") / "judge.md")]
    found += [
        (f"{path.parent.name.removesuffix('-judge').upper()}: with notes against without", path)
        for path in sorted(layout.rag_dir.glob("*-judge/judge.md"))
    ]
    parts = [f"### {title}\n\n{path.read_text()}" for title, path in found if path.is_file()]
    if not parts:
        return None
    return Section("Judge", "\n".join(parts))


def _file_section(title: str, md: Path, png: Path | None, stage: str, caption: str) -> Section:
    if not md.is_file():
        return Section(title, _missing(title.lower(), stage))
    figures = [Figure(png, caption)] if png is not None and png.is_file() else []
    return Section(title, md.read_text(), figures)


def _samples(recipe: Recipe) -> Section:
    path = recipe.layout.samples
    if not path.is_file():
        return Section("Sample answers", _missing("sample answers", "samples"))
    rows = json.loads(path.read_text())
    labels = [key for key in rows[0] if key != "question"] if rows else []
    text = "Held-out questions, greedy decoding, through each model's chat template.\n\n"
    text += markdown_table(
        ["question", *labels], [[r["question"], *map(r.get, labels)] for r in rows]
    )
    return Section("Sample answers: M0 and M2 side by side", text)


def _use(recipe: Recipe) -> Section:
    from tutorlm.pipeline.targets import served_model

    model, why = served_model(recipe)
    atomic_write_text(
        recipe.layout.served_choice(), json.dumps({"model": model, "why": why}, indent=2)
    )
    commands = tutor_commands(model, recipe.layout.index)
    text = (
        f"The tutor to talk to is {why}.\n\n"
        "```bash\n"
        f"{commands['chat']}\n"
        f"{commands['serve']}   # then open http://127.0.0.1:8000/\n"
        "```\n"
    )
    return Section("Talk to the tutor", text)


def _targets(recipe: Recipe, state: PipelineState) -> Section:
    from tutorlm.pipeline.targets import check_targets, targets_markdown

    text = "What this run set out to show, and whether its own figures show it.\n\n"
    return Section("Targets", text + targets_markdown(check_targets(recipe, state.stages)))


def build_run_report(recipe: Recipe, state: PipelineState) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the run directory."""
    layout = recipe.layout
    sections = [
        _overview(recipe, state),
        _targets(recipe, state),
        _data(recipe),
        _training(recipe),
        _evaluation(recipe),
        *filter(None, [tutor_section(recipe)]),
        *filter(None, [_judge(recipe)]),
        _file_section(
            "Quantization",
            layout.quantize_table,
            layout.quantize_plot,
            "quantize",
            "Accuracy against memory",
        ),
        _file_section(
            "Retrieval ablation",
            layout.ablation_table,
            layout.ablation_plot,
            "rag",
            "MCQA accuracy with and without retrieved notes",
        ),
        _samples(recipe),
        _use(recipe),
    ]
    return write_report(layout.run_dir, f"tutorlm run report: {recipe.name}", sections)
