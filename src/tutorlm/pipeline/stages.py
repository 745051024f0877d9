"""The stages of ``tutorlm run``, in order, each a thin call into its stage's package.

data -> sft (M1) -> dpo (M2) -> eval of M0, M1, M2 -> quantize M2 -> RAG ablation
-> sample answers -> report. What each stage reads, writes and depends on is its
contract (:mod:`tutorlm.contract`); each adapter here only calls the stage function
and maps its result onto a :class:`StageOutcome`. The work itself lives in
``tutorlm.data``, ``tutorlm.train``, ``tutorlm.evaluate`` and so on.
"""

from __future__ import annotations

import hashlib
import json

from tutorlm.contract import CONTRACTS
from tutorlm.pipeline.runner import PipelineState, Stage, StageOutcome
from tutorlm.recipe import Recipe

# -- data -----------------------------------------------------------------------------


def _run_data(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.data.build import build_data

    manifest = build_data(recipe, progress=False, log=None)
    files = manifest["outputs"]
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    counts = ", ".join(f"{name} {info['rows']}" for name, info in sorted(files.items()))
    return StageOutcome(
        summary=f"wrote {len(files)} files ({counts})",
        outputs=[recipe.layout.data_manifest],
        content=content,
    )


# -- training -------------------------------------------------------------------------


def _last_metrics(recipe: Recipe, stage: str) -> dict:
    from tutorlm.report.plots import read_metrics

    rows = [row for row in read_metrics(recipe.layout.metrics(stage)) if "loss" in row]
    return rows[-1] if rows else {}


def _run_sft(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.train.sft import run_sft

    run_sft(recipe, resume=True)
    last = _last_metrics(recipe, "sft")
    return StageOutcome(
        summary=f"M1 trained, final loss {last.get('loss', float('nan')):.3f}",
        outputs=[recipe.layout.merged("sft")],
    )


def _run_dpo(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.train.dpo import run_dpo

    run_dpo(recipe, resume=True)
    last = _last_metrics(recipe, "dpo")
    accuracy = last.get("rewards/accuracies", float("nan"))
    return StageOutcome(
        summary=f"M2 trained, final loss {last.get('loss', float('nan')):.3f}, "
        f"train reward accuracy {accuracy:.2f}",
        outputs=[recipe.layout.merged("dpo")],
    )


# -- evaluation -----------------------------------------------------------------------


def _eval_stage(label: str):
    def run(recipe: Recipe, state: PipelineState) -> StageOutcome:
        from tutorlm.evaluate.runner import run_eval

        results = run_eval(
            recipe, recipe.layout.model(label), out_dir=recipe.layout.eval_dir(label)
        )
        if label == "M2" and recipe.eval.judge is not None:
            _judge_m2_against_m0(recipe)
        shown = []
        for name, entry in results.get("tasks", {}).items():
            value = entry.get("accuracy", {}).get("value") if isinstance(entry, dict) else None
            if value is not None:
                shown.append(f"{name} {value:.3f}")
        return StageOutcome(
            summary=f"{label}: " + (", ".join(shown) or "done"),
            outputs=[recipe.layout.eval_results(label)],
        )

    return run


def _judge_m2_against_m0(recipe: Recipe) -> None:
    """The configured judge on M2's and M0's replies to the same tutor items (their
    eval folders), into ``eval/judge-m2-m0``; the report shows its win rate and its
    agreement with the graders' verdicts."""
    from tutorlm.evaluate.judge_files import judge_eval_dirs

    layout = recipe.layout
    judge_eval_dirs(
        recipe.eval.judge,
        layout.eval_dir("M2"),
        layout.eval_dir("M0"),
        layout.eval_dir("judge-m2-m0"),
        labels=("M2", "M0"),
        seed=recipe.seed,
    )


# -- quantization and retrieval -------------------------------------------------------


def _run_quantize(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.quantize.compare import run_quantize_compare

    layout = recipe.layout
    run_quantize_compare(recipe, layout.model("M2"), layout.quantize_dir)
    return StageOutcome(summary="comparison table written", outputs=[layout.quantize_table])


def _run_rag(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.evaluate.ablations import QUIZ_QUESTIONS, run_recipe_ablations
    from tutorlm.rag.index import build_index

    layout, settings = recipe.layout, recipe.rag
    build_index(list(settings.sources), layout.index, settings=settings.index_settings())
    if QUIZ_QUESTIONS in settings.ablation_questions:  # the course's own practice quiz
        from tutorlm.quiz.build import build_quiz

        build_quiz(
            layout.index, layout.rag_dir / "quiz.jsonl", count=settings.quiz_count,
            seed=recipe.seed, k=settings.k, mode=settings.mode, log=lambda line: None,
        )  # fmt: skip
    result = run_recipe_ablations(recipe, layout.rag_dir, log=lambda line: None)
    if not result.blocks:
        why = "; ".join(f"{name}: {reason}" for name, reason in result.skipped.items())
        return StageOutcome(summary=f"index built; no ablation ({why})", outputs=[layout.index])
    parts = []
    for block in result.blocks:
        best = max(block.rows[1:], key=lambda row: row.accuracy.value, default=None)
        part = f"{block.label} on {block.n} {block.questions} questions: no retrieval "
        part += f"{block.rows[0].accuracy.value:.3f}"
        if best is not None:
            part += f", best {best.condition} {best.accuracy.value:.3f}"
        parts.append(part)
    return StageOutcome(summary="; ".join(parts), outputs=[layout.ablation_table, layout.index])


# -- samples and report ---------------------------------------------------------------


def _run_samples(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.pipeline.samples import answer_samples

    out = answer_samples(recipe)
    return StageOutcome(summary="5 questions answered by M0 and M2", outputs=[out])


def _run_report(recipe: Recipe, state: PipelineState) -> StageOutcome:
    from tutorlm.pipeline.report import build_run_report

    md, html = build_run_report(recipe, state)
    return StageOutcome(summary=f"report at {html}", outputs=[html, md])


RUNNERS = {
    "data": _run_data,
    "sft": _run_sft,
    "dpo": _run_dpo,
    "eval-m0": _eval_stage("M0"),
    "eval-m1": _eval_stage("M1"),
    "eval-m2": _eval_stage("M2"),
    "quantize": _run_quantize,
    "rag": _run_rag,
    "samples": _run_samples,
    "report": _run_report,
}
"""The function that does each declared stage's work."""


def pipeline_stages() -> list[Stage]:
    """The stages of a full run, in their contracts' order."""
    return [Stage.declared(contract, RUNNERS[name]) for name, contract in CONTRACTS.items()]
