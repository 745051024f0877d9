"""One evaluation task on one scorer: :func:`run_task`, and what a task needs around it.

The evaluate stage (``tutorlm.evaluate.runner``) and the quantize comparison's rows
both score through :func:`run_task`, so a task is computed one way everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tutorlm.evaluate.config import EvalConfig


@dataclass
class TaskSpec:
    """One task to run: its name in results, its kind, and its input files."""

    name: str
    kind: str  # mcqa | perplexity | reward | generation | choice | tutor
    paths: list[Path] = field(default_factory=list)
    hint: str = ""  # how to build a missing file
    tasks: tuple[str, ...] = ()  # kind tutor: the tutor:* metrics asked for
    source: object = None  # kind tutor: the recipe's tutoring source (its split, retrieval)


def _limit(items: list, settings: EvalConfig) -> list:
    return items[: settings.max_questions] if settings.max_questions else items


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Rows as JSON lines, written atomically."""
    from tutorlm.data.formats import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _choice_items(spec: TaskSpec, path: Path) -> list:
    """Choice items of a ``choice`` task: ``{context, endings, label}`` rows of
    ``choice_file``, or the MCQA records of an eval set (question, choices, answer)."""
    from tutorlm.evaluate.choice import ChoiceItem, read_choice_items

    if ":" not in spec.name:
        return read_choice_items(path)
    from tutorlm.data.formats import read_records

    records = read_records(path, "mcqa").records
    return [ChoiceItem(r.id, r.question, list(r.choices), r.answer) for r in records]


def float32_rechecker(model_spec, scorer):
    """A function that loads ``model_spec`` in float32 once, on first call, for rechecks,
    on the scorer's device (or device map) and its processes (``Scorer.sibling``).

    Returns None when the scorer already runs in float32.
    """
    import torch

    if scorer.dtype == torch.float32:
        return None
    cache: dict = {}

    def make():
        if "scorer" not in cache:
            cache["scorer"] = scorer.sibling(model_spec, dtype=torch.float32)
            cache["scorer"].tokenizer = scorer.tokenizer  # with the recipe's chat template
        return cache["scorer"]

    return make


def run_task(
    spec: TaskSpec,
    scorer,
    settings: EvalConfig,
    *,
    seed: int,
    reference,
    out_dir: Path,
    predictions_name: str,
    recheck=None,
    write: bool = True,
    generator=None,
):
    """Run one task with the ``eval`` settings; returns its results dict and a one-line
    summary. Per-item outputs (predictions, pairs, generations) go to ``out_dir``
    where ``write`` (the main one of several processes; the others score alike).
    ``generator`` (a :func:`tutorlm.bulk.open_generator` one, e.g. vLLM's) decodes the
    generation tasks instead of the scorer's model."""
    from tutorlm.data.formats import read_records

    def save(path: Path, rows: Sequence[dict]) -> None:
        if write:
            write_jsonl(path, rows)

    path = spec.paths[0] if spec.paths else None
    if spec.kind == "mcqa":
        from tutorlm.evaluate.mcqa import evaluate_mcqa

        records = _limit(read_records(path, "mcqa").records, settings)
        result = evaluate_mcqa(
            scorer,
            records,
            method=settings.mcqa_method,
            shots=settings.shots,
            chat=settings.chat,
            seed=seed,
            resamples=settings.bootstrap_resamples,
            recheck=recheck if settings.recheck_margin > 0 else None,
            recheck_margin=settings.recheck_margin,
        )
        save(out_dir / predictions_name, [p.to_dict() for p in result.predictions])
        line = f"accuracy {result.accuracy}"
        if result.accuracy_norm:
            line += f"  acc_norm {result.accuracy_norm}"
        line += f"  n={result.n}  {result.prompt_format}  ({result.questions_per_second:.1f} questions/s"
        rechecked = result.extra.get("rechecked", 0)
        line += f"; {rechecked} close calls re-scored in float32)" if rechecked else ")"
        return result.to_dict(), line
    if spec.kind == "perplexity":
        from tutorlm.evaluate.perplexity import perplexity, read_text_files

        result = perplexity(
            scorer,
            read_text_files(spec.paths),
            window=settings.perplexity_window,
            stride=settings.perplexity_stride,
        )
        return result.to_dict(), f"perplexity {result}"
    if spec.kind == "reward":
        from tutorlm.evaluate.reward import reward_accuracy

        pairs = _limit(read_records(path, "preference").records, settings)
        dtype = settings.dtype if settings.reward_dtype == "auto" else settings.reward_dtype
        policy = scorer
        if dtype == "float32" and recheck is not None:
            policy = recheck()  # the model again, in float32 (loaded once, shared with MCQA)
        result = reward_accuracy(
            policy,
            reference,
            pairs=pairs,
            beta=settings.reward_beta,
            batch_size=settings.batch_size,
            dtype=dtype,
            seed=seed,
            resamples=settings.bootstrap_resamples,
        )
        save(out_dir / f"pairs.{spec.name}.jsonl", result.pairs)
        line = f"reward accuracy {result.accuracy}  ties {result.tie_rate:.3f}  margin {result.mean_margin:.4f}"
        if result.warning:
            line += f"\n  warning: {result.warning}"
        return result.to_dict(), line
    if spec.kind == "generation":
        from tutorlm.evaluate.generation_metrics import evaluate_generation

        records = _limit(read_records(path, "sft").records, settings)
        records = records[: settings.generation_limit] if settings.generation_limit else records
        result = evaluate_generation(
            scorer,
            records,
            max_new_tokens=settings.generation_max_new_tokens,
            generator=generator,
        )
        save(out_dir / f"generations.{spec.name}.jsonl", result.samples)
        em = "" if result.exact_match is None else f"  exact match {result.exact_match:.3f}"
        line = (
            f"BLEU-4 {result.bleu:.2f}  ROUGE-1 {result.rouge1:.4f}  ROUGE-2 {result.rouge2:.4f}  "
            f"ROUGE-L {result.rougeL:.4f}{em}  n={result.n}"
        )
        return result.to_dict(), line
    if spec.kind == "choice":
        from tutorlm.evaluate.choice import choice_completion

        items = _limit(_choice_items(spec, path), settings)
        result = choice_completion(scorer, items, seed=seed, resamples=settings.bootstrap_resamples)
        save(out_dir / f"predictions.{spec.name}.jsonl", result.predictions)
        return (
            result.to_dict(),
            f"acc {result.accuracy}  acc_norm {result.accuracy_norm}  n={result.accuracy.n}",
        )
    if spec.kind == "tutor":
        return _run_tutor(
            spec, scorer, settings, seed=seed, out_dir=out_dir, write=write, generator=generator
        )
    raise ValueError(f"unknown task kind {spec.kind!r}")


def _run_tutor(spec: TaskSpec, scorer, settings: EvalConfig, *, seed, out_dir, write, generator):
    """The tutor tasks: held-out tutoring items asked greedily in the served tutor's
    prompt, over a notes index retrieved as the tutoring source's training rows were."""
    from tutorlm.data.sources.tutoring import notes_index
    from tutorlm.data.sources.tutoring_items import tutor_eval_items
    from tutorlm.evaluate.tutor import first_of_each, notes_prompt_for, run_tutor_tasks, tutor_line

    source = spec.source
    items = tutor_eval_items(source, seed=seed)
    items = first_of_each(items, settings.tutor_limit)
    with notes_index(source) as index:
        prompt_for = notes_prompt_for(
            index,
            scorer.tokenizer,
            k=source.k,
            search_mode=source.mode,
            budget_tokens=source.budget_tokens,
            items=items,
        )
        out = run_tutor_tasks(
            scorer.model,
            scorer.tokenizer,
            items,
            prompt_for=prompt_for,
            out_dir=out_dir,
            tasks=spec.tasks,
            max_new_tokens=settings.tutor_max_new_tokens,
            batch_size=scorer.batch_size,
            seed=seed,
            resamples=settings.bootstrap_resamples,
            write=write,
            progress=scorer.progress,
            generator=generator,
        )
    lines = [tutor_line(name, entry) for name, entry in out["tasks"].items()]
    return out, "\n  ".join(lines)
