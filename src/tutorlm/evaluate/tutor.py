"""The tutor tasks: ask each item through the served tutor's prompt, grade the replies.

Each item is a question with what grading needs (see :data:`ITEM_KEYS`); its
``task`` says which behaviour it tests and so which metrics grade it:

- ``grounded`` (a question the notes answer): ``tutor:grounded``,
  ``tutor:citation_precision``, ``tutor:citation_correctness``;
- ``abstain`` (a question the notes do not answer): ``tutor:abstention``;
- ``hint`` (a problem asked in hint mode): ``tutor:hint_leakage``;
- ``explain`` (a problem asked in tutor mode): ``tutor:explanation``;
- ``free`` (a question without choices): ``tutor:letter_collapse``.

Every item is asked once, greedily, through ``prompt_for(item)`` (the served tutor's
prompt: the mode's system prompt and the notes retrieved for the question; see
:func:`notes_prompt_for`), however many metrics grade its reply. Each metric is the
share of its items whose verdict is true, with a bootstrap 95 % interval over items;
what "true" means, and whether more is better, is in :data:`METRICS` (it is "kept
the answer back" for hint leakage, higher better, and "a bare letter" for letter
collapse, lower better). Every verdict is written per item, with its reason, to
``predictions.tutor-<metric>.jsonl``, so a person can audit the grader and two models
can be compared item by item (:func:`read_verdicts`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tutorlm.errors import TutorlmError
from tutorlm.evaluate import tutor_graders as graders
from tutorlm.evaluate.stats import bootstrap_interval

ITEM_KEYS = ("id", "task", "mode", "question", "answer", "variants", "file", "section", "final")
"""The keys of a tutor item: ``answer`` is the canonical answer ("" for ``abstain``),
``variants`` other accepted answers, ``file`` / ``section`` the gold note (grounded),
``final`` the final answer of a worked problem (hint, explain; else ``answer``)."""
ITEM_TASKS = ("grounded", "abstain", "hint", "explain", "free")
MODES = ("tutor", "hint")
DEFAULT_MAX_NEW_TOKENS = 192
"""Long enough for a few worked steps and "The answer is ..." from a small model."""


class TutorEvalError(TutorlmError):
    """Tutor items that cannot be graded as given, or an unknown tutor task."""


def _sources(sources: Sequence) -> list[tuple[str, str]]:
    """``(file, heading path)`` of each note in the prompt (``Hit``s), numbered from 1."""
    return [(hit.chunk.source, hit.chunk.heading) for hit in sources]


def _final(item: dict) -> str:
    return item.get("final") or item["answer"]


def _grade_correctness(item: dict, reply: str, sources: list) -> tuple[bool, str] | None:
    if not (item.get("file") or item.get("section")):
        return None  # no gold note to check against
    return graders.citation_correctness(reply, sources, item.get("file"), item.get("section"))


@dataclass(frozen=True)
class TutorMetric:
    """One tutor task: which items it grades, how, and what its rate means."""

    name: str
    item_task: str
    counts: str
    """What a true verdict means: the rate is the share of items where it holds."""
    better: str  # "higher" or "lower"
    grade: Callable[[dict, str, list[tuple[str, str]]], tuple[bool, str] | None]
    """``grade(item, reply, sources)``: ``(verdict, why)``, or None (not gradable)."""


METRICS: dict[str, TutorMetric] = {
    metric.name: metric
    for metric in (
        TutorMetric(
            "tutor:grounded",
            "grounded",
            "the reply contains the canonical answer or a variant",
            "higher",
            lambda item, reply, _: graders.grounded_answer(
                reply, item["answer"], item.get("variants", ())
            ),
        ),
        TutorMetric(
            "tutor:citation_precision",
            "grounded",
            "the reply cites a note and every cited [n] is in the prompt",
            "higher",
            lambda _, reply, sources: graders.citation_precision(reply, len(sources)),
        ),
        TutorMetric(
            "tutor:citation_correctness",
            "grounded",
            "a cited note is from the gold section",
            "higher",
            lambda item, reply, sources: _grade_correctness(item, reply, sources),
        ),
        TutorMetric(
            "tutor:abstention",
            "abstain",
            "the reply says the notes do not answer, with no figure of its own",
            "higher",
            lambda item, reply, _: graders.abstains(reply, item["question"]),
        ),
        TutorMetric(
            "tutor:hint_leakage",
            "hint",
            "the hint keeps the final answer back (does not leak it)",
            "higher",
            lambda item, reply, _: graders.hint_keeps_answer(
                reply, _final(item), item["question"], item.get("variants", ())
            ),
        ),
        TutorMetric(
            "tutor:explanation",
            "explain",
            "the reply has at least two steps and ends with the correct final answer",
            "higher",
            lambda item, reply, _: graders.explains(reply, _final(item), item.get("variants", ())),
        ),
        TutorMetric(
            "tutor:letter_collapse",
            "free",
            "the reply is a bare choice letter although no choices were given",
            "lower",
            lambda _, reply, __: graders.bare_letter(reply),
        ),
    )
}
TUTOR_TASKS: tuple[str, ...] = ("tutor", *METRICS)
"""Task names to register: ``tutor`` runs every metric, ``tutor:<metric>`` one."""


def tutor_metrics(tasks: Sequence[str] | None = None) -> list[TutorMetric]:
    """The metrics that task names ask for (None or ``tutor``: all), in display order."""
    names = list(tasks) if tasks else ["tutor"]
    unknown = [name for name in names if name not in TUTOR_TASKS]
    if unknown:
        raise TutorEvalError(f"unknown tutor task(s) {unknown}; known: {', '.join(TUTOR_TASKS)}")
    wanted = set(METRICS) if "tutor" in names else set(names)
    return [metric for name, metric in METRICS.items() if name in wanted]


def predictions_name(metric: str) -> str:
    """The per-item file of a metric: ``tutor:grounded`` -> ``predictions.tutor-grounded.jsonl``
    (no ``:``, which some file systems refuse)."""
    return f"predictions.{metric.replace(':', '-')}.jsonl"


def check_items(items: Sequence[dict]) -> None:
    """Refuse items that cannot be graded: a missing key, an unknown task or mode, an
    id used twice (verdicts are paired between models by id), or an item that needs
    an answer and has none."""
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"tutor item {item.get('id', index)!r}"
        missing = [key for key in ITEM_KEYS if key not in item]
        if missing:
            raise TutorEvalError(f"{where}: missing {', '.join(missing)}")
        if item["task"] not in ITEM_TASKS or item["mode"] not in MODES:
            raise TutorEvalError(
                f"{where}: task {item['task']!r} / mode {item['mode']!r}; tasks are "
                f"{', '.join(ITEM_TASKS)}, modes {', '.join(MODES)}"
            )
        if item["task"] in ("grounded", "hint", "explain") and not _final(item).strip():
            raise TutorEvalError(f"{where}: a {item['task']} item needs an answer")
        if item["id"] in seen:
            raise TutorEvalError(f"{where}: the id is used twice")
        seen.add(item["id"])


def first_of_each(items: Sequence[dict], limit: int | None) -> list[dict]:
    """The first ``limit`` items of each item task (``grounded``, ``hint``, ...), in
    order: ``eval.tutor_limit`` (None keeps them all)."""
    if not limit:
        return list(items)
    seen: dict[str, int] = {}
    kept = []
    for item in items:
        seen[item["task"]] = seen.get(item["task"], 0) + 1
        if seen[item["task"]] <= limit:
            kept.append(item)
    return kept


def notes_prompt_for(
    index, tokenizer, *, k: int = 3, search_mode="hybrid", budget_tokens=768, items=()
):
    """``prompt_for(item)``: the served tutor's prompt for an item, i.e. the notes
    ``index`` retrieves for its question and ``tutorlm.rag.prompt.tutor_messages`` in the
    item's mode (``k``, ``search_mode`` and ``budget_tokens`` as the server's: the
    recipe's ``rag`` section). The questions of ``items`` are searched up front, their
    embeddings in one batch."""
    from tutorlm.rag.prompt import tutor_messages

    questions = list(dict.fromkeys(item["question"] for item in items))
    found = (
        dict(zip(questions, index.search_many(questions, k=k, mode=search_mode), strict=True))
        if questions
        else {}
    )

    def prompt_for(item: dict) -> tuple[list[dict], list]:
        hits = found.get(item["question"])
        if hits is None:
            hits = index.search(item["question"], k=k, mode=search_mode)
        return tutor_messages(
            item["question"], hits, tokenizer, mode=item["mode"], budget_tokens=budget_tokens
        )

    return prompt_for


def run_tutor_tasks(
    model,
    tokenizer,
    items: Sequence[dict],
    *,
    prompt_for: Callable[[dict], tuple[list[dict], list]],
    out_dir: Path | str,
    tasks: Sequence[str] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    generator=None,
    seed: int = 0,
    resamples: int = 1000,
    write: bool = True,
    progress: bool = False,
) -> dict:
    """Ask the items greedily through ``prompt_for``, grade, write per-item predictions.

    Args:
        model: the causal LM (unused when ``generator`` is given).
        tokenizer: its tokenizer, with the chat template the prompts go through.
        items: tutor items (:data:`ITEM_KEYS`); only those some asked metric grades
            are generated.
        prompt_for: ``item -> (messages, sources)``, ``sources[i]`` the ``Hit`` cited
            ``[i+1]`` (:func:`notes_prompt_for` builds the served tutor's).
        out_dir: where ``predictions.tutor-<metric>.jsonl`` go.
        tasks: names from :data:`TUTOR_TASKS`; None: all.
        max_new_tokens: longest reply.
        batch_size: prompts per ``generate`` call (transformers).
        generator: a :mod:`tutorlm.bulk` generator to use instead (e.g. vLLM's).
        seed: the bootstrap's seed. resamples: bootstrap resamples (0: no interval).
        write: write the predictions files (the main process of several).
        progress: a progress bar while generating.

    Returns:
        ``{"tasks": {metric: entry}, "skipped": {metric: reason}}``; an entry holds
        ``kind`` ("tutor"), ``rate`` (value, low, high, n), ``n``, ``count`` (true
        verdicts), ``ungraded``, ``counts`` and ``better`` (what the rate means) and
        ``predictions`` (the per-item file's name).
    """
    from tutorlm.bulk import Sampling, TransformersGenerator
    from tutorlm.data.formats import atomic_write_text

    metrics = tutor_metrics(tasks)
    check_items(items)
    asked = [item for item in items if item["task"] in {m.item_task for m in metrics}]
    prompts = [prompt_for(item) for item in asked]
    if generator is None:
        generator = TransformersGenerator(
            model, tokenizer, batch_size=batch_size, progress=progress
        )
    replies = (
        generator.generate(
            [messages for messages, _ in prompts],
            Sampling(max_new_tokens=max_new_tokens),
            desc="tutor",
        )
        if asked
        else []
    )
    results: dict = {"tasks": {}, "skipped": {}}
    for metric in metrics:
        rows, verdicts = [], []
        for item, (messages, hits), reply in zip(asked, prompts, replies, strict=True):
            if item["task"] != metric.item_task:
                continue
            sources = _sources(hits)
            graded = metric.grade(item, reply.text, sources)
            verdict, why = graded if graded is not None else (None, "no gold note to grade against")
            if verdict is not None:
                verdicts.append(float(verdict))
            rows.append(
                {
                    "id": item["id"],
                    "task": metric.name,
                    "prompt": messages,
                    "sources": [", ".join(x for x in source if x) for source in sources],
                    "reply": reply.text,
                    "finish_reason": reply.finish_reason,
                    "verdict": verdict,
                    "why": why,
                }
            )
        if not verdicts:
            results["skipped"][metric.name] = f"no gradable {metric.item_task} items"
            continue
        rate = bootstrap_interval(verdicts, resamples=resamples, seed=seed)
        name = predictions_name(metric.name)
        if write:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            atomic_write_text(Path(out_dir) / name, text)
        results["tasks"][metric.name] = {
            "kind": "tutor",
            "rate": rate.to_dict(),
            "n": rate.n,
            "count": int(sum(verdicts)),
            "ungraded": len(rows) - rate.n,
            "counts": metric.counts,
            "better": metric.better,
            "predictions": name,
        }
    return results


def tutor_line(name: str, entry: dict) -> str:
    """One line of a tutor metric for the console: rate, interval, count, direction."""
    rate = entry["rate"]
    return (
        f"{name:<27} {rate['value']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]  "
        f"{entry['count']}/{entry['n']}  ({entry['better']} is better)"
    )


def tutor_markdown(results: dict) -> str:
    """The tutor metrics as a Markdown table: rate with 95 % interval, n, what counts."""
    lines = [
        "| task | rate [95 % CI] | count / n | better | counts when |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, entry in results["tasks"].items():
        rate = entry["rate"]
        lines.append(
            f"| {name} | {rate['value']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] | "
            f"{entry['count']} / {entry['n']} | {entry['better']} | {entry['counts']} |"
        )
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"| {name} | – | – | – | skipped: {reason} |")
    return "\n".join(lines) + "\n"


def read_verdicts(path: Path | str) -> dict[str, bool]:
    """The graded verdicts of a predictions file by item id, for paired comparisons
    (the int8 model against its float one: same ids, verdict against verdict)."""
    verdicts = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["verdict"] is not None:
            verdicts[row["id"]] = bool(row["verdict"])
    return verdicts
