"""What retrieval adds to MCQA: the same questions with and without retrieved notes.

For each chunk size an index of the notes is built; for each k the k best chunks
for a question's text go, numbered and within the token budget, in front of the
question in the evaluate stage's MCQA prompt. Everything else (prompt layout,
letter scoring, bootstrap intervals) is the evaluate stage's, so "no retrieval"
here is the plain MCQA score. Because every condition answers the same questions,
the gain is measured per question (paired) and its interval is far narrower than
the difference of two independent intervals would suggest.

:func:`run_recipe_ablation` maps a recipe onto it, once, for both ``tutorlm run``'s
``rag`` stage and ``tutorlm eval rag``, so that both score the same ablation alike;
:func:`tutorlm.evaluate.ablations.run_recipe_ablations` runs it for every model of
``rag.ablation_models`` and every question set of ``rag.ablation_questions``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tutorlm.data.formats import MCQARecord, atomic_write_text
from tutorlm.errors import TutorlmError
from tutorlm.rag.config import BUNDLED_EMBEDDER, BUNDLED_NOTES, IndexSettings, SearchMode
from tutorlm.rag.records import Hit
from tutorlm.rag.store import read_manifest


@dataclass
class AblationRow:
    """One condition: accuracy, its paired gain over no retrieval, and what was retrieved."""

    condition: str
    chunk_tokens: int | None
    k: int | None
    accuracy: object  # tutorlm.evaluate.stats.Interval
    gain: object | None  # Interval of (correct with notes - correct without), per question
    gold_retrieved: float | None
    """Share of questions whose prompt holds a chunk of their source section."""
    context_tokens: float
    """Mean tokens of notes in the prompt (generator's tokenizer)."""
    seconds: float
    accuracy_norm: object | None = None
    """Length-normalised accuracy (``choice`` scoring only)."""
    gain_norm: object | None = None

    def to_dict(self) -> dict:
        return {
            "condition": self.condition,
            "chunk_tokens": self.chunk_tokens,
            "k": self.k,
            "accuracy": self.accuracy.to_dict(),
            "gain": self.gain.to_dict() if self.gain is not None else None,
            "gold_retrieved": self.gold_retrieved,
            "context_tokens": round(self.context_tokens, 1),
            "seconds": round(self.seconds, 2),
            "accuracy_norm": self.accuracy_norm.to_dict() if self.accuracy_norm else None,
            "gain_norm": self.gain_norm.to_dict() if self.gain_norm else None,
        }


@dataclass
class AblationTable:
    """The ablation's rows and where its files are."""

    model: str
    n: int
    mode: str
    method: str
    rows: list[AblationRow] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    label: str = ""
    """The block's model label (``M0``, ``M2`` or the model's folder name)."""
    questions: str = ""
    """The block's question set (``notes``, ``mcqa:arc`` ...)."""

    @property
    def title(self) -> str:
        """The block's heading line: model, questions, search and scoring."""
        who = f"{self.label} (`{self.model}`)" if self.label else self.model
        asked = f" from {self.questions}" if self.questions else ""
        return (
            f"MCQA with and without retrieval: {who}, {self.n} questions{asked}, "
            f"{self.mode} search, {self.method} scoring"
        )

    def markdown(self) -> str:
        """The table as Markdown, 95 % bootstrap intervals in brackets."""
        normed = any(row.accuracy_norm is not None for row in self.rows)
        header = ["condition", "accuracy", "gain vs none"]
        header += ["acc_norm", "gain vs none (acc_norm)"] if normed else []
        header += ["gold section in prompt", "notes tokens"]
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in self.rows:
            cells = [
                row.condition,
                interval_text(row.accuracy),
                interval_text(row.gain, signed=True),
            ]
            if normed:
                cells += [
                    interval_text(row.accuracy_norm),
                    interval_text(row.gain_norm, signed=True),
                ]
            cells.append("–" if row.gold_retrieved is None else f"{row.gold_retrieved:.2f}")
            cells.append(f"{row.context_tokens:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "label": self.label,
            "questions": self.questions,
            "n": self.n,
            "mode": self.mode,
            "method": self.method,
            "rows": [row.to_dict() for row in self.rows],
            "files": self.files,
        }


def interval_text(value, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    form = "+.3f" if signed else ".3f"
    return f"{value.value:{form}} [{value.low:{form}}, {value.high:{form}}]"


def notes_mcqa_records(path: str | Path | None = None) -> list[MCQARecord]:
    """The ``mcqa`` items of the notes questions file (default: the bundled one), as
    MCQA records with ``subject`` = the notes file's stem and ``meta`` = file and section,
    as the data stage's ``notes`` source writes them."""
    if path is None:
        path = Path(str(resources.files("tutorlm") / "assets" / "notes_questions.jsonl"))
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("kind") != "mcqa":
            continue
        records.append(
            MCQARecord(
                id=str(row["id"]),
                source="tutorlm-notes",
                question=row["question"],
                choices=row["choices"],
                answer=row["answer"],
                subject=Path(row["file"]).stem,
                meta={"file": Path(row["file"]).name, "section": row["section"]},
            )
        )
    return records


def notes_questions(mcqa_file: str | Path, limit: int | None = None) -> list[MCQARecord]:
    """The MCQA questions of ``mcqa_file`` (a run's ``mcqa.test.jsonl``) written from the
    course notes (``source`` ``notes*``): their answers are in the indexed notes."""
    from tutorlm.data.formats import read_records

    records = read_records(mcqa_file, "mcqa", strict=False).records
    notes = [record for record in records if record.source.startswith("notes")]
    return notes[:limit] if limit else notes


def index_sources(index_dir: str | Path) -> tuple[list[str], str]:
    """The files an existing index was built from and its embedding model (for
    ``eval --rag DIR``, which rebuilds the ablation's indexes from the same inputs)."""
    manifest = read_manifest(index_dir)
    return [entry["path"] for entry in manifest["files"].values()], manifest["embedder"]["name"]


def _holds_gold(record: MCQARecord, sources: list[Hit]) -> bool | None:
    file, section = record.meta.get("file"), record.meta.get("section")
    if not file or not section:
        return None
    wanted = " ".join(section.split()).lower()
    return any(
        Path(hit.chunk.source).name == file
        and " ".join(hit.chunk.heading.split(" > ")[-1].split()).lower() == wanted
        for hit in sources
    )


def with_notes(record: MCQARecord, context: str) -> MCQARecord:
    """The record with the numbered notes block put before its question."""
    if not context:
        return record
    return record.model_copy(update={"question": f"{context}\n\n{record.question.strip()}"})


def run_rag_ablation(
    model_spec,
    mcqa_records: Sequence[MCQARecord],
    notes_paths: Sequence[str | Path] = (BUNDLED_NOTES,),
    *,
    ks: Sequence[int] = (1, 3, 5),
    chunk_sizes: Sequence[int] = (64, 200),
    out_dir: str | Path,
    mode: SearchMode = "hybrid",
    budget_tokens: int = 768,
    embedding_model: str = BUNDLED_EMBEDDER,
    method: str = "letter",
    chat: bool = False,
    seed: int = 0,
    resamples: int = 1000,
    scorer=None,
    embedder=None,
    index_root: str | Path | None = None,
    log=print,
) -> AblationTable:
    """Score MCQA without retrieval, then with k notes for every k and chunk size.

    Args:
        model_spec: the generator (bundled name, directory, hub id); ignored when
            ``scorer`` is given.
        mcqa_records: the questions; records whose ``meta`` names a ``file`` and a
            ``section`` also get the share of prompts holding their source section.
        notes_paths: files and folders to index (default: the bundled notes).
        ks: numbers of retrieved chunks to compare.
        chunk_sizes: chunk lengths in embedding-model tokens, one index each.
        out_dir: where the indexes, ``ablation.json``/``.md``/``.png`` and
            ``predictions.jsonl`` go.
        mode, budget_tokens: search mode and notes budget of the prompt.
        embedding_model: the embedding model (or pass ``embedder``).
        method, chat: the evaluate stage's MCQA scoring method and chat rendering.
        seed, resamples: for the bootstrap intervals.
        scorer: a ready ``tutorlm.evaluate.scorer.Scorer`` (tests pass a tiny one).
        embedder: a ready embedder (see ``rag.embed.Embedder``).
        index_root: where the ``index-<n>tok`` folders go (default ``out_dir``); the
            blocks of one ablation share them, so the notes are embedded once.
        log: called with one progress line at a time.
    """
    from tutorlm.evaluate.mcqa import evaluate_mcqa
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.evaluate.stats import bootstrap_interval
    from tutorlm.rag.embed import load_embedder
    from tutorlm.rag.index import build_index
    from tutorlm.rag.prompt import format_context
    from tutorlm.rag.retrieve import load_index

    out_dir = Path(out_dir)
    records = list(mcqa_records)
    if not records:
        raise ValueError("run_rag_ablation needs at least one MCQA record")
    scorer = scorer or Scorer.from_spec(model_spec)
    embedder = embedder or load_embedder(embedding_model)
    score = dict(method=method, chat=chat, seed=seed, resamples=resamples)
    table = AblationTable(str(model_spec), len(records), mode, method)
    predictions: list[dict] = []

    started = time.perf_counter()
    baseline = evaluate_mcqa(scorer, records, **score)
    base_correct = _correct(baseline)
    table.rows.append(
        AblationRow(
            condition="no retrieval",
            chunk_tokens=None,
            k=None,
            accuracy=baseline.accuracy,
            gain=None,
            gold_retrieved=None,
            context_tokens=0.0,
            seconds=time.perf_counter() - started,
            accuracy_norm=baseline.accuracy_norm,
        )
    )
    predictions += [p.to_dict() | {"condition": "no retrieval"} for p in baseline.predictions]
    log(f"no retrieval: {baseline.accuracy}")

    for chunk_tokens in chunk_sizes:
        settings = IndexSettings(
            embedding_model=embedder.name,
            chunk_tokens=chunk_tokens,
            chunk_overlap=min(32, chunk_tokens // 4),
        )
        index_dir = Path(index_root or out_dir) / f"index-{chunk_tokens}tok"
        build_index(list(notes_paths), index_dir, settings=settings, embedder=embedder)
        index = load_index(index_dir, embedder=embedder)
        retrieved = [index.search(r.question, k=max(ks), mode=mode) for r in records]
        for k in ks:
            started = time.perf_counter()
            contexts = [
                format_context(hits[:k], scorer.tokenizer, budget_tokens=budget_tokens)
                for hits in retrieved
            ]
            augmented = [
                with_notes(r, text) for r, (text, _) in zip(records, contexts, strict=True)
            ]
            result = evaluate_mcqa(scorer, augmented, **score)
            correct, correct_norm = _correct(result)
            gain = bootstrap_interval(
                _minus(correct, base_correct[0]), resamples=resamples, seed=seed
            )
            gain_norm = None
            if correct_norm is not None:
                differences = _minus(correct_norm, base_correct[1])
                gain_norm = bootstrap_interval(differences, resamples=resamples, seed=seed)
            gold = [_holds_gold(r, s) for r, (_, s) in zip(records, contexts, strict=True)]
            known = [g for g in gold if g is not None]
            tokens = [len(scorer.encode(text)) for text, _ in contexts]
            name = f"k={k}, {chunk_tokens}-token chunks"
            table.rows.append(
                AblationRow(
                    condition=name,
                    chunk_tokens=chunk_tokens,
                    k=k,
                    accuracy=result.accuracy,
                    gain=gain,
                    gold_retrieved=sum(known) / len(known) if known else None,
                    context_tokens=sum(tokens) / len(tokens),
                    seconds=time.perf_counter() - started,
                    accuracy_norm=result.accuracy_norm,
                    gain_norm=gain_norm,
                )
            )
            for prediction, (_, sources) in zip(result.predictions, contexts, strict=True):
                predictions.append(
                    prediction.to_dict()
                    | {"condition": name, "sources": [hit.chunk.id for hit in sources]}
                )
            log(f"{name}: {result.accuracy}, gain {gain}")
    _write(table, out_dir, predictions)
    return table


#: How the ablation scores answers: full-choice likelihood, because a small model's
#: letter scores barely move with context (it answers "A" almost always) while its
#: choice likelihoods do (docs/rag.md).
ABLATION_METHOD = "choice"

#: The question set ``rag.ablation_questions`` names ``notes``: a run's MCQA test
#: questions written from the course notes, whose answers the index holds.
NOTES_QUESTIONS = "notes"


class AblationError(TutorlmError, ValueError):
    """An ablation the recipe asks for that cannot be set up (a question set of another kind)."""


def recipe_notes_questions(recipe) -> list[MCQARecord]:
    """A run's notes questions: the items of its ``mcqa.test.jsonl`` written from the
    course notes, at most ``eval.max_questions`` of them."""
    return notes_questions(recipe.layout.data("mcqa.test.jsonl"), recipe.eval.max_questions)


def run_recipe_ablation(
    recipe,
    model: str,
    records: Sequence[MCQARecord],
    out_dir: str | Path,
    *,
    sources: Sequence[str | Path] | None = None,
    embedding_model: str | None = None,
    method: str = ABLATION_METHOD,
    scorer=None,
    embedder=None,
    index_root: str | Path | None = None,
    log=print,
) -> AblationTable:
    """The ablation as a recipe sets it: ``rag`` gives the ks, chunk sizes, search mode,
    notes budget, sources and embedding model; ``eval`` the dtype, batch size, chat
    rendering and bootstrap resamples; ``chat_template`` the template; ``seed`` the
    bootstrap's seed. The model is scored as ``tutorlm eval`` scores it.

    Args:
        recipe: a loaded :class:`tutorlm.recipe.Recipe`.
        model: the generator's spec (a run's M2, or any model).
        records: the questions (see :func:`recipe_notes_questions`).
        out_dir: where the indexes and the table go.
        sources, embedding_model: index these instead of ``rag.sources`` with
            ``rag.embedding_model`` (``eval rag --index DIR`` passes DIR's own).
        method: MCQA scoring, :data:`ABLATION_METHOD` unless asked otherwise.
        scorer: a ready scorer of ``model`` (tests pass a tiny one).
        embedder, index_root: see :func:`run_rag_ablation`.
        log: called with one progress line at a time.
    """
    scorer = scorer or recipe_scorer(recipe, model)
    settings = recipe.rag
    return run_rag_ablation(
        model,
        records,
        list(settings.sources if sources is None else sources),
        ks=settings.ablation_ks,
        chunk_sizes=settings.ablation_chunk_tokens,
        out_dir=out_dir,
        mode=settings.mode,
        budget_tokens=settings.budget_tokens,
        embedding_model=embedding_model or settings.embedding_model,
        method=method,
        chat=recipe.eval.chat,
        seed=recipe.seed,
        resamples=recipe.eval.bootstrap_resamples,
        scorer=scorer,
        embedder=embedder,
        index_root=index_root,
        log=log,
    )


def recipe_scorer(recipe, model: str):
    """``model`` loaded as ``tutorlm eval`` loads it: the recipe's dtype, device, batch
    size and chat template."""
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.templates import apply_template

    scorer = Scorer.from_spec(
        model, dtype=recipe.eval.dtype, device=recipe.device, batch_size=recipe.eval.batch_size
    )
    if recipe.chat_template is not None:
        apply_template(scorer.tokenizer, recipe.chat_template)
    return scorer


def _correct(result) -> tuple[list[float], list[float] | None]:
    """Per-question correctness, plain and (``choice`` scoring) length-normalised."""
    plain = [float(p.predicted == p.answer) for p in result.predictions]
    if result.accuracy_norm is None:
        return plain, None
    return plain, [float(p.predicted_norm == p.answer) for p in result.predictions]


def _minus(after: list[float], before: list[float]) -> list[float]:
    return [a - b for a, b in zip(after, before, strict=True)]


def _write(table: AblationTable, out_dir: Path, predictions: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table.files = {
        "json": str(out_dir / "ablation.json"),
        "markdown": str(out_dir / "ablation.md"),
        "plot": str(out_dir / "ablation.png"),
        "predictions": str(out_dir / "predictions.jsonl"),
    }
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    atomic_write_text(out_dir / "predictions.jsonl", lines)
    write_block_files(table, out_dir)


def write_block_files(table: AblationTable, out_dir: Path) -> None:
    """A block's own ``ablation.md``, ``.json`` and ``.png`` (again once its label is known)."""
    plot_ablation(table, out_dir / "ablation.png")
    atomic_write_text(out_dir / "ablation.md", f"{table.title}\n\n{table.markdown()}")
    atomic_write_text(out_dir / "ablation.json", json.dumps(table.to_dict(), indent=2) + "\n")


def plot_ablation(table: AblationTable, path: Path) -> Path:
    """Accuracy against k, one line per chunk size, the no-retrieval band behind them."""
    return plot_ablations([table], path)


def plot_ablations(tables: Sequence[AblationTable], path: Path) -> Path:
    """One panel per block, side by side on one accuracy axis, so that blocks (M0
    against M2) compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(
        1, len(tables), figsize=(6 * len(tables), 4), dpi=120, sharey=True, squeeze=False
    )
    for axes, table in zip(panels[0], tables, strict=True):
        _plot_block(axes, table)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _plot_block(axes, table: AblationTable) -> None:
    base = table.rows[0].accuracy
    axes.axhspan(base.low, base.high, color="0.85", label=f"no retrieval ({base.value:.3f})")
    axes.axhline(base.value, color="0.4", linewidth=1)
    sizes = sorted({row.chunk_tokens for row in table.rows if row.chunk_tokens})
    for number, size in enumerate(sizes):
        rows = [row for row in table.rows if row.chunk_tokens == size]
        values = [row.accuracy.value for row in rows]
        errors = [[v - row.accuracy.low for v, row in zip(values, rows, strict=True)],
                  [row.accuracy.high - v for v, row in zip(values, rows, strict=True)]]  # fmt: skip
        shift = 0.08 * (number - (len(sizes) - 1) / 2)  # side by side, so the bars stay apart
        axes.errorbar([row.k + shift for row in rows], values, yerr=errors, marker="o",
                      capsize=3, label=f"{size}-token chunks")  # fmt: skip
    axes.set_xlabel("retrieved chunks k")
    axes.set_ylabel("MCQA accuracy (95 % CI)")
    who = table.label or Path(table.model).name
    asked = f" ({table.questions})" if table.questions else ""
    axes.set_title(f"{who}: {table.n} questions{asked}, {table.mode} retrieval", fontsize=9)
    axes.set_xticks(sorted({row.k for row in table.rows if row.k}))
    axes.legend(loc="best", fontsize=8)
