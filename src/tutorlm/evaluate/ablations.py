"""The recipe's RAG ablation as the reports ran it: several models, several question sets.

ProbLLMs (§5) asks what retrieval adds "compared to the base model": the same
with-and-without-notes comparison (:mod:`tutorlm.evaluate.ablation`) for the base
model M0 and the fine-tuned M2, on its own MCQA sets. ``rag.ablation_models`` names
the models (``M0``, ``M2`` resolved by the run's layout, or any spec),
``rag.ablation_questions`` the question sets (``notes`` or an MCQA task of the eval
stage); each pair is one block of one table and one plot. The ``rag`` stage of
``tutorlm run`` and ``tutorlm eval rag`` both run it here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tutorlm.data.formats import MCQARecord, atomic_write_text
from tutorlm.evaluate.ablation import (
    ABLATION_METHOD,
    NOTES_QUESTIONS,
    AblationError,
    AblationTable,
    interval_text,
    plot_ablations,
    recipe_notes_questions,
    recipe_scorer,
    run_recipe_ablation,
    write_block_files,
)

#: The run's trained models: they exist only once their stage has run.
TRAINED_LABELS = ("M1", "M2")


def ablation_models(recipe, names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(label, spec)`` of each model the ablation asks: ``names`` (labels ``M0`` /
    ``M1`` / ``M2``, resolved by the run's layout, or model specs), else
    ``rag.ablation_models``, else the run's final model."""
    from tutorlm.evaluate.runner import model_label, run_model_label
    from tutorlm.layout import MODEL_LABELS

    layout = recipe.layout
    names = list(names or recipe.rag.ablation_models or [layout.final_model()])
    found = []
    for name in names:
        spec = layout.model(name) if name in MODEL_LABELS else str(name)
        found.append((run_model_label(recipe, spec) or model_label(spec), spec))
    return found


QUIZ_QUESTIONS = "quiz"
"""``rag.ablation_questions`` name of the practice quiz built from the notes index."""


def ablation_question_sets(recipe) -> tuple[dict[str, list[MCQARecord]], dict[str, str]]:
    """The question sets of ``rag.ablation_questions`` with their records, and those that
    cannot be asked yet, with why (a set whose file the data stage has not written).

    Raises:
        AblationError: a name that is neither ``notes`` nor an MCQA task of the eval stage.
    """
    from tutorlm.data.formats import read_records
    from tutorlm.evaluate.runner import missing_input, recipe_tasks
    from tutorlm.evaluate.scorer import ScorerError

    sets, skipped = {}, {}
    for name in recipe.rag.ablation_questions:
        if name == QUIZ_QUESTIONS:  # built by the rag stage from the run's notes index
            path = recipe.layout.rag_dir / "quiz.jsonl"
            if path.is_file():
                sets[name] = read_records(path, "mcqa").records
            else:
                skipped[name] = f"{path} is not built (the rag stage builds it)"
            continue
        if name == NOTES_QUESTIONS:
            sets[name] = recipe_notes_questions(recipe)
            if not sets[name]:
                del sets[name]
                skipped[name] = "no MCQA test questions written from the notes"
            continue
        try:
            spec = recipe_tasks(recipe, [name])[0]
        except ScorerError as error:
            raise AblationError(f"rag.ablation_questions: {error}") from None
        if spec.kind != "mcqa":
            raise AblationError(
                f"rag.ablation_questions: {name!r} is a {spec.kind} task; the ablation asks "
                f"MCQA questions: {NOTES_QUESTIONS}, mcqa_test, mmlu_stem or mcqa:<eval set>"
            )
        problem = missing_input(spec)
        if problem:
            skipped[name] = problem.removeprefix(f"{name}: ")
            continue
        records = read_records(spec.paths[0], "mcqa").records
        sets[name] = records[: recipe.eval.max_questions] if recipe.eval.max_questions else records
    return sets, skipped


@dataclass
class Ablations:
    """Every block of a recipe's ablation (one per model and question set), and the
    blocks that could not run, with why."""

    blocks: list[AblationTable] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    judged: dict[str, str] = field(default_factory=dict)
    """Model label -> the judge's table of its answers with and without notes."""

    def markdown(self) -> str:
        """One block per model and question set; several blocks start with their summary."""
        if len(self.blocks) == 1 and not self.skipped:
            return f"{self.blocks[0].title}\n\n{self.blocks[0].markdown()}"
        lines = [
            "MCQA with and without retrieval, one block per model and question set.",
            "",
            "| model | questions | no retrieval | best with notes | gain vs none |",
            "| --- | --- | --- | --- | --- |",
        ]
        for block in self.blocks:
            best = max(block.rows[1:], key=lambda row: row.accuracy.value, default=None)
            lines.append(
                f"| {block.label} | {block.questions} | {interval_text(block.rows[0].accuracy)} | "
                + (
                    f"{best.condition}: {interval_text(best.accuracy)} | "
                    f"{interval_text(best.gain, signed=True)} |"
                    if best
                    else "– | – |"
                )
            )
        for block in self.blocks:
            lines += ["", f"## {block.label}, {block.questions}", "", block.title, ""]
            lines.append(block.markdown().rstrip("\n"))
        lines += [""] + [f"- Not measured: {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines).rstrip("\n") + "\n"

    def to_dict(self) -> dict:
        """The first block's fields at the top (readers of a one-block ablation read
        those), every block under ``blocks``."""
        first = self.blocks[0].to_dict() if self.blocks else {}
        return {
            **first,
            "blocks": [block.to_dict() for block in self.blocks],
            "skipped": self.skipped,
            "files": self.files,
        }


def run_recipe_ablations(
    recipe,
    out_dir: str | Path,
    *,
    models: Sequence[str] | None = None,
    questions: dict[str, Sequence[MCQARecord]] | None = None,
    sources: Sequence[str | Path] | None = None,
    embedding_model: str | None = None,
    method: str = ABLATION_METHOD,
    scorers: dict[str, object] | None = None,
    embedder=None,
    log=print,
) -> Ablations:
    """The recipe's ablation for every model and question set; writes one table and plot.

    One block alone writes its files straight into ``out_dir`` (as the ablation always
    has); several write theirs under ``out_dir/<model>-<set>/`` and the whole table
    (``ablation.md``, ``.json``, ``.png``) into ``out_dir``; the notes indexes are
    built once, in ``out_dir``.

    Args:
        recipe: a loaded recipe (``rag`` and ``eval`` sections, see :func:`run_recipe_ablation`).
        out_dir: where everything goes.
        models: labels or specs (default :func:`ablation_models` of the recipe).
        questions: question sets by name (default :func:`ablation_question_sets`).
        sources, embedding_model, method: as :func:`run_recipe_ablation`.
        scorers: ready scorers by model spec (tests pass tiny ones).
        embedder: a ready embedder (tests pass hand-made vectors).
        log: called with one progress line at a time.
    """
    out_dir = Path(out_dir)
    result = Ablations()
    if questions is None:
        questions, result.skipped = ablation_question_sets(recipe)
    chosen = ablation_models(recipe, models)
    several = len(chosen) * (len(questions) + len(result.skipped)) > 1
    for label, spec in chosen:
        if not questions:
            break
        if label in TRAINED_LABELS and not (Path(spec) / "config.json").is_file():
            result.skipped[label] = f"{spec} is not trained yet (tutorlm run RECIPE trains it)"
            continue
        scorer = (scorers or {}).get(spec)
        scorer = scorer if scorer is not None else recipe_scorer(recipe, spec)
        for name, records in questions.items():
            log(f"{label} on {name}: {len(records)} questions")
            block_dir = out_dir / _slug(f"{label}-{name}") if several else out_dir
            block = run_recipe_ablation(
                recipe, spec, records, block_dir, sources=sources,
                embedding_model=embedding_model, method=method, scorer=scorer,
                embedder=embedder, index_root=out_dir, log=log,
            )  # fmt: skip
            block.label, block.questions = label, name
            write_block_files(block, block_dir)
            result.blocks.append(block)
        if recipe.eval.judge is not None:  # free-form replies with and without notes
            judged = judge_retrieval(recipe, label, scorer, out_dir, log=log)
            if judged is not None:
                result.judged[label] = str(out_dir / _slug(f"{label}-judge") / "judge.md")
        del scorer  # one model in memory at a time
    if several and result.blocks:
        out_dir.mkdir(parents=True, exist_ok=True)
        result.files = {
            "json": str(out_dir / "ablation.json"),
            "markdown": str(out_dir / "ablation.md"),
            "plot": str(out_dir / "ablation.png"),
        }
        plot_ablations(result.blocks, out_dir / "ablation.png")
        atomic_write_text(out_dir / "ablation.md", result.markdown())
        atomic_write_text(out_dir / "ablation.json", json.dumps(result.to_dict(), indent=2) + "\n")
    elif result.blocks:
        result.files = dict(result.blocks[0].files)
    return result


def judge_retrieval(recipe, label: str, scorer, out_dir: Path, *, log=print) -> dict | None:
    """The recipe's judge on one model's free-form answers to the held-out notes
    questions, asked with the retrieved notes (the served tutor's prompt) and without
    (the mode prompt and the bare question): ProbLLMs' planned GPT-4 comparison of
    answers with and without retrieval. Both answer sets keep the grounded grader's
    verdicts, so the judge's agreement with them is measured too. Writes under
    ``out_dir/<label>-judge/``."""
    from tutorlm.data.sources.tutoring import notes_index
    from tutorlm.data.sources.tutoring_items import tutor_eval_items
    from tutorlm.evaluate.judge_files import judge_eval_dirs
    from tutorlm.evaluate.runner import recipe_tutoring_source
    from tutorlm.evaluate.tutor import first_of_each, notes_prompt_for, run_tutor_tasks
    from tutorlm.rag.prompt import tutor_messages

    source = recipe_tutoring_source(recipe)
    settings = recipe.eval
    held_out = first_of_each(tutor_eval_items(source, seed=recipe.seed), settings.tutor_limit)
    items = [item for item in held_out if item["task"] == "grounded"]
    base = out_dir / _slug(f"{label}-judge")
    options = {
        "tasks": ["tutor:grounded"],
        "max_new_tokens": settings.tutor_max_new_tokens,
        "batch_size": scorer.batch_size,
        "seed": recipe.seed,
        "resamples": settings.bootstrap_resamples,
    }

    def without_notes(item: dict):
        return tutor_messages(
            item["question"], [], scorer.tokenizer, mode=item["mode"],
            budget_tokens=source.budget_tokens,
        )  # fmt: skip

    with notes_index(source) as index:
        with_notes = notes_prompt_for(
            index, scorer.tokenizer, k=source.k, search_mode=source.mode,
            budget_tokens=source.budget_tokens, items=items,
        )  # fmt: skip
        log(f"{label}: {len(items)} notes questions answered with and without notes for the judge")
        run_tutor_tasks(scorer.model, scorer.tokenizer, items, prompt_for=with_notes,
                        out_dir=base / "with-notes", **options)  # fmt: skip
    run_tutor_tasks(scorer.model, scorer.tokenizer, items, prompt_for=without_notes,
                    out_dir=base / "without-notes", **options)  # fmt: skip
    return judge_eval_dirs(
        settings.judge, base / "with-notes", base / "without-notes", base,
        labels=("with notes", "without notes"), seed=recipe.seed, echo=log,
    )  # fmt: skip


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).lower()
