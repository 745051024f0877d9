"""The stages of ``tutorlm run``, in order, each a thin call into its stage's package.

data -> sft (M1) -> dpo (M2) -> eval of M0, M1, M2 -> quantize M2 -> RAG ablation
-> sample answers -> report. Each adapter here only maps a recipe onto the stage
function and its outputs onto a :class:`StageOutcome`; the work itself lives in
``tutorlm.data``, ``tutorlm.train``, ``tutorlm.evaluate`` and so on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tutorlm.pipeline.runner import PipelineState, Stage, StageOutcome
from tutorlm.recipe import Recipe


def model_paths(recipe: Recipe) -> dict[str, str]:
    """The three models of a run: M0 (base), M1 (after SFT), M2 (after DPO)."""
    return {
        "M0": recipe.model,
        "M1": str(recipe.run_dir / "sft" / "merged"),
        "M2": str(recipe.run_dir / "dpo" / "merged"),
    }


def _section(recipe: Recipe, *names: str) -> dict:
    data = recipe.to_dict()
    return {name: data[name] for name in names}


# -- data -----------------------------------------------------------------------------


def _run_data(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.data.build import build_data

    manifest = build_data(recipe, progress=False, log=None)
    files = manifest["outputs"]
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    counts = ", ".join(f"{name} {info['rows']}" for name, info in sorted(files.items()))
    return StageOutcome(
        summary=f"wrote {len(files)} files ({counts})",
        outputs=[recipe.run_dir / "data" / "manifest.json"],
        content=content,
    )


# -- training -------------------------------------------------------------------------


def _last_metrics(path: Path) -> dict:
    from tutorlm.report.plots import read_metrics

    rows = [row for row in read_metrics(path) if "loss" in row]
    return rows[-1] if rows else {}


def _run_sft(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.train.sft import run_sft

    out = run_sft(recipe, resume=True)
    last = _last_metrics(out / "metrics.jsonl")
    return StageOutcome(
        summary=f"M1 trained, final loss {last.get('loss', float('nan')):.3f}",
        outputs=[out / "merged"],
    )


def _run_dpo(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.train.dpo import run_dpo

    out = run_dpo(recipe, resume=True)
    last = _last_metrics(out / "metrics.jsonl")
    accuracy = last.get("rewards/accuracies", float("nan"))
    return StageOutcome(
        summary=f"M2 trained, final loss {last.get('loss', float('nan')):.3f}, "
        f"train reward accuracy {accuracy:.2f}",
        outputs=[out / "merged"],
    )


# -- evaluation -----------------------------------------------------------------------


def _eval_plan(recipe: Recipe, label: str) -> tuple[list[str], str | None]:
    """The tasks of one model's evaluation and the reference of its reward.

    The reward of a model is its implicit DPO reward against the model it was
    trained from: M1 against M0, M2 against where DPO started (M1, or M0 with
    ``train.dpo_start: m0``). M0 has no such reference (against itself every pair
    ties), so its evaluation leaves ``reward`` out. An explicit
    ``eval.reward_reference`` is used for every model.
    """
    tasks = list(recipe.eval.tasks)
    if recipe.eval.reward_reference:
        return tasks, recipe.eval.reward_reference
    paths = model_paths(recipe)
    if label == "M0":
        return [task for task in tasks if task != "reward"], None
    if label == "M1" or recipe.train.dpo_start == "m0" or not _sft_on(recipe):
        return tasks, paths["M0"]
    return tasks, paths["M1"]


def _eval_stage(label: str):
    def run(recipe: Recipe, state: PipelineState) -> StageOutcome:
        from tutorlm.evaluate.runner import run_eval

        out_dir = recipe.run_dir / "eval" / label.lower()
        tasks, reference = _eval_plan(recipe, label)
        results = run_eval(
            recipe, model_paths(recipe)[label], tasks=tasks, out_dir=out_dir, reference=reference
        )
        shown = []
        for name, entry in results.get("tasks", {}).items():
            value = entry.get("accuracy", {}).get("value") if isinstance(entry, dict) else None
            if value is not None:
                shown.append(f"{name} {value:.3f}")
        return StageOutcome(
            summary=f"{label}: " + (", ".join(shown) or "done"),
            outputs=[out_dir / "results.json"],
        )

    return run


# -- quantization and retrieval -------------------------------------------------------


def _run_quantize(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.quantize.compare import run_quantize_compare

    out_dir = recipe.run_dir / "quantize"
    run_quantize_compare(recipe, model_paths(recipe)["M2"], out_dir)
    return StageOutcome(summary="comparison table written", outputs=[out_dir / "compare.md"])


def rag_index_dir(recipe: Recipe) -> Path:
    """Where the run's notes index lives (the one chat and serve use)."""
    return Path(recipe.rag.index_dir or recipe.run_dir / "rag" / "index")


def _run_rag(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.rag.ablation import notes_questions, run_rag_ablation
    from tutorlm.rag.index import build_index

    settings = recipe.rag
    out_dir = recipe.run_dir / "rag"
    build_index(list(settings.sources), rag_index_dir(recipe), settings=settings.index_settings())
    mcqa_test = recipe.run_dir / "data" / "mcqa.test.jsonl"
    records = notes_questions(mcqa_test, recipe.eval.max_questions)
    if not records:
        return StageOutcome(
            summary="index built; no MCQA test questions from the notes, so no ablation",
            outputs=[rag_index_dir(recipe)],
        )
    table = run_rag_ablation(
        model_paths(recipe)["M2"],
        records,
        settings.sources,
        ks=settings.ablation_ks,
        chunk_sizes=settings.ablation_chunk_tokens,
        out_dir=out_dir,
        mode=settings.mode,
        budget_tokens=settings.budget_tokens,
        embedding_model=settings.embedding_model,
        # full-choice likelihood: a small model's letter scores barely move with context
        # (it answers "A" almost always), its choice likelihoods do (docs/rag.md)
        method="choice",
        seed=recipe.seed,
        log=lambda line: None,
    )
    best = max(table.rows[1:], key=lambda row: row.accuracy.value, default=None)
    summary = f"{len(records)} notes questions; no retrieval {table.rows[0].accuracy.value:.3f}"
    if best is not None:
        summary += f", best {best.condition} {best.accuracy.value:.3f}"
    return StageOutcome(summary=summary, outputs=[out_dir / "ablation.md", rag_index_dir(recipe)])


# -- samples and report ---------------------------------------------------------------


def _run_samples(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.pipeline.samples import answer_samples

    out = answer_samples(recipe, model_paths(recipe))
    return StageOutcome(summary="5 questions answered by M0 and M2", outputs=[out])


def _run_report(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.pipeline.report import build_run_report

    md, html = build_run_report(recipe, state)
    return StageOutcome(summary=f"report at {html}", outputs=[html, md])


def _sft_on(recipe: Recipe) -> bool:
    return recipe.data.sft is not None or recipe.train.sft_train_file is not None


def _dpo_on(recipe: Recipe) -> bool:
    has_pairs = recipe.data.prefs is not None or recipe.train.prefs_train_file is not None
    return has_pairs and (_sft_on(recipe) or recipe.train.dpo_start == "m0")


def _quantize_on(recipe: Recipe) -> bool:
    return _dpo_on(recipe) and bool(getattr(recipe.quantize, "methods", None))


def _rag_on(recipe: Recipe) -> bool:
    return _dpo_on(recipe) and bool(recipe.rag.sources)


def pipeline_stages() -> list[Stage]:
    """The stages of a full run, in order."""
    train = lambda r: _section(r, "model", "chat_template", "train", "seed")  # noqa: E731
    evaluate = lambda r: _section(r, "eval", "seed")  # noqa: E731
    return [
        Stage("data", _run_data, settings=lambda r: _section(r, "model", "data", "seed")),
        Stage("sft", _run_sft, settings=train, after=("data",), enabled=_sft_on),
        Stage("dpo", _run_dpo, settings=train, after=("sft", "data"), enabled=_dpo_on),
        Stage("eval-m0", _eval_stage("M0"), settings=evaluate, after=("data",)),
        Stage("eval-m1", _eval_stage("M1"), settings=evaluate, after=("sft",), enabled=_sft_on),
        Stage("eval-m2", _eval_stage("M2"), settings=evaluate, after=("dpo",), enabled=_dpo_on),
        Stage(
            "quantize",
            _run_quantize,
            settings=lambda r: _section(r, "quantize", "eval", "seed"),
            after=("dpo",),
            enabled=_quantize_on,
        ),
        Stage(
            "rag",
            _run_rag,
            settings=lambda r: _section(r, "rag", "eval", "seed"),
            after=("dpo", "data"),
            enabled=_rag_on,
        ),
        Stage(
            "samples",
            _run_samples,
            settings=lambda r: _section(r, "seed", "serve"),
            after=("dpo", "data"),
            enabled=_dpo_on,
        ),
        Stage(
            "report",
            _run_report,
            settings=lambda r: r.to_dict(),
            after=(
                "data",
                "sft",
                "dpo",
                "eval-m0",
                "eval-m1",
                "eval-m2",
                "quantize",
                "rag",
                "samples",
            ),
        ),
    ]
