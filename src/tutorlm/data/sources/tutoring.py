"""Tutoring rows: the served tutor's prompt, with replies that cite, abstain, hint or explain.

A tutor is useful when it answers from the notes it is given and says which, says so
when the notes do not answer, gives a hint instead of the answer in hint mode, and
shows the steps in tutor mode. Each behaviour is a set of rows asked in exactly the
served prompt (``tutorlm.rag.prompt.tutor_messages``: the mode's system prompt and the
notes a real retrieval returns, near misses included):

- ``grounded``: a notes question; the reply is its answer, each sentence citing the
  retrieved note of the gold section as ``[n]``. Rejected: uncited, or citing a
  wrong note.
- ``abstain``: a question the notes do not answer; the reply says so (a few fixed
  phrasings). Rejected: a fabricated figure "from" a note.
- ``hint`` (hint mode): a worked problem; the reply is a first step or a guiding
  question, checked not to hold the final answer. Rejected: the answer given away.
- ``explain`` (tutor mode): the same kind of problem; the reply is the worked steps
  ending "The answer is X.". Rejected: a bare answer or a letter.

The notes questions are split by a hash of their id (``notes_split``): training rows
use the train share, and ``tutor_eval_items`` returns the held-out share, plus hint and
explain problems drawn with other seeds, in the item format the tutor evaluation reads.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from tutorlm.data.examples import DataError
from tutorlm.data.formats import Message, PreferenceRecord, SFTRecord, file_sha256
from tutorlm.data.sources.base import Reader, package_version
from tutorlm.data.sources.tutoring_items import (
    Problem,
    assets_root,
    cite,
    explain_reply,
    hint_reply,
    load_questions,
    seed_of,
    split_questions,
    worked_problems,
)
from tutorlm.data.tutoring_config import TutoringSource

ABSTAIN_REPLIES = (
    "The notes I was given do not cover this question, so I cannot answer it from them. "
    "Please check your textbook or ask your teacher.",
    "I can't find this in the course notes, and I don't want to guess a figure. "
    "The notes do not cover it.",
    "None of these notes answers this question, so I won't make up an answer. "
    "The notes do not cover it.",
    "The course notes here do not contain the answer to this question, so I can't tell "
    "you from them.",
)
"""Reference replies of the abstain rows; each says the notes do not cover the question."""
FABRICATIONS = (
    "According to note [{n}], the answer is {figure}.",
    "The answer is {figure} [{n}].",
    "It is about {figure}, as note [{n}] says.",
)
"""Rejected abstain replies: a figure the notes never gave, cited to a note."""


class _SpansOnly:
    """The embedding model's tokenizer without the model: BM25 search needs chunks cut
    as the served index cuts them, and no vectors (they are zeros here)."""

    dim = 1

    def __init__(self, spec: str):
        from transformers import AutoTokenizer

        from tutorlm.rag.embed import resolve_embedder_path

        self.name = spec
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_embedder_path(spec))

    def embed(self, texts):
        import numpy as np

        return np.zeros((len(texts), 1), dtype=np.float32)

    def token_spans(self, text):
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def _is_gold(hit, row: dict) -> bool:
    heading = hit.chunk.heading.split(" > ")[-1]
    return Path(hit.chunk.source).name == row["file"] and heading == row["section"]


def with_retrieval(config: TutoringSource, rag=None) -> TutoringSource:
    """``config`` with its unset retrieval settings from ``rag`` (a recipe's ``rag``
    section), else from the ``rag`` defaults: what the served tutor retrieves with."""
    from tutorlm.rag.config import RagConfig

    return config.retrieving_as(rag or RagConfig())


@contextmanager
def notes_index(config: TutoringSource | None = None, *, embedder=None):
    """The notes of a tutoring source indexed as the served index is (its chunking,
    its embedding model's tokenizer), in a temporary folder, for the block's length.

    Training rows and the tutor evaluation retrieve through it, so both see the notes
    the same way. BM25 search needs no embedding model: only its tokenizer is loaded.
    """
    from tutorlm.rag.config import IndexSettings
    from tutorlm.rag.index import build_index
    from tutorlm.rag.retrieve import load_index

    config = with_retrieval(config or TutoringSource(type="tutoring", name="tutoring"))
    if embedder is None:
        if config.mode == "bm25":
            embedder = _SpansOnly(config.embedding_model)
        else:
            from tutorlm.rag.embed import load_embedder

            embedder = load_embedder(config.embedding_model)
    settings = IndexSettings(
        embedding_model=config.embedding_model,
        chunk_tokens=config.chunk_tokens,
        chunk_overlap=config.chunk_overlap,
    )
    with tempfile.TemporaryDirectory(prefix="tutorlm-tutoring-") as folder:
        notes = assets_root(config.notes) / "notes"
        build_index([notes], folder, settings=settings, embedder=embedder)
        yield load_index(folder, embedder=embedder)


class TutoringReader(Reader):
    """Rows of a ``tutoring`` source, already in the record format of its section.

    ``tokenizer`` (the model's, for the notes budget) and ``embedder`` may be set before
    ``records``; otherwise the tokenizer of ``config.tokenizer`` or ``model`` (the
    recipe's model, set by the build) is loaded, and the embedding model for dense or
    hybrid search. ``dropped`` counts the rows left out, by reason.
    """

    def __init__(self, config: TutoringSource, kind: str, seed: int, section: str):
        super().__init__(with_retrieval(config), kind, seed, section)
        self.seed = config.seed if config.seed is not None else seed
        self.model: str | None = None
        self.tokenizer = None
        self.embedder = None
        self.dropped: Counter = Counter()
        self.gold_inserted = 0

    @property
    def format(self) -> str:
        return self.config.records

    def check(self) -> None:
        if self.config.records != self.kind:
            raise DataError(
                f"source '{self.name}': records: {self.config.records} cannot feed the "
                f"{self.kind} section"
            )
        if self.config.tokenizer is None and self.model is None and self.tokenizer is None:
            raise DataError(f"source '{self.name}': no tokenizer: set tokenizer (a model spec)")
        if self.config.chunk_overlap >= self.config.chunk_tokens:
            raise DataError(f"source '{self.name}': chunk_overlap must be below chunk_tokens")
        load_questions(assets_root(self.config.notes))

    def _tokenizer(self):
        if self.tokenizer is None:
            from tutorlm.models import load_tokenizer

            self.tokenizer = load_tokenizer(self.config.tokenizer or self.model)
        return self.tokenizer

    def records(self):
        """Every record of the source, behaviour by behaviour, in a fixed order."""
        config = self.config
        questions = split_questions(config, "train")
        with notes_index(config, embedder=self.embedder) as index:
            rows = []
            for behaviour, kind, make in (
                ("grounded", "qa", self._grounded),
                ("abstain", "unanswerable", self._abstain),
            ):
                if behaviour in config.behaviours:
                    asked = questions[kind]
                    found = index.search_many(
                        [row["question"] for row in asked], k=config.k, mode=config.mode
                    )
                    rows += [make(index, row, hits) for row, hits in zip(asked, found, strict=True)]
            if "abstain" in config.behaviours and config.abstain_without_gold:
                rows += self._abstain_without_gold(index, questions["qa"])
            problems, found = [], []
            if {"hint", "explain"} & set(config.behaviours):
                problems = worked_problems(config, self.seed, "train")
                # the served tutor retrieves for every question: a problem is asked with
                # the notes it brings up, which the reply (rightly) leaves aside
                found = index.search_many(
                    [problem.question for problem in problems], k=config.k, mode=config.mode
                )
            for behaviour, make in (("hint", self._hint), ("explain", self._explain)):
                if behaviour in config.behaviours:
                    rows += [
                        make(problem, hits) for problem, hits in zip(problems, found, strict=True)
                    ]
        yield from (row for row in rows if row is not None)

    def _rng(self, *parts) -> random.Random:
        return random.Random(seed_of(self.seed, self.name, *parts))

    def _prompt(self, question: str, hits: list, mode: str):
        from tutorlm.rag.prompt import tutor_messages

        return tutor_messages(
            question,
            hits,
            self._tokenizer(),
            mode=mode,
            budget_tokens=self.config.budget_tokens,
        )

    def _record(self, uid: str, prompt: list[dict], chosen: str, rejected: str, meta: dict):
        messages = [Message(**m) for m in prompt]
        reply = Message(role="assistant", content=chosen)
        if self.config.records == "sft":
            return SFTRecord(id=uid, source=self.name, messages=[*messages, reply])
        return PreferenceRecord(
            id=uid,
            source=self.name,
            prompt=messages,
            chosen=[reply],
            rejected=[Message(role="assistant", content=rejected)],
            meta=meta,
        )

    def _grounded(self, index, row: dict, hits: list):
        from tutorlm.rag.records import Hit

        if not any(_is_gold(hit, row) for hit in hits):
            if self.config.missing_gold == "drop":
                self.dropped["gold_not_retrieved"] += 1
                return None
            gold_rows = [i for i, c in enumerate(index.chunks) if _is_gold(Hit(c, 0.0), row)]
            if not gold_rows:
                raise DataError(f"source '{self.name}': {row['id']}: no chunk of its section")
            docs, scores = index.bm25.scores(row["question"])
            score = dict(zip(docs.tolist(), scores.tolist(), strict=True))
            best = max(gold_rows, key=lambda i: (score.get(i, 0.0), -i))
            hits = [*hits[: self.config.k - 1], Hit(index.chunks[best], score.get(best, 0.0))]
            self.gold_inserted += 1  # kept, with the gold chunk put in (not a drop)
        prompt, sources = self._prompt(row["question"], hits, "tutor")
        numbers = [n for n, hit in enumerate(sources, start=1) if _is_gold(hit, row)]
        if not numbers:  # the gold note did not fit the budget
            self.dropped["gold_over_budget"] += 1
            return None
        rng = self._rng("grounded", row["id"])
        wrong = [n for n in range(1, len(sources) + 1) if n not in numbers]
        if wrong and rng.random() < 0.5:
            rejected, defect = cite(row["answer"], rng.choice(wrong)), "wrong_note"
        else:
            rejected, defect = row["answer"].strip(), "uncited"
        meta = {"behaviour": "grounded", "defect": defect, "cited": numbers[0]}
        chosen = cite(row["answer"], numbers[0])
        return self._record(f"grounded-{row['id']}", prompt, chosen, rejected, meta)

    def _abstain(self, index, row: dict, hits: list):
        prompt, sources = self._prompt(row["question"], hits, "tutor")
        rng = self._rng("abstain", row["id"])
        figure = rng.choice([str(rng.randint(11, 1999)), f"{rng.uniform(1, 10):.2f}"])
        number = rng.randint(1, max(1, len(sources)))
        rejected = rng.choice(FABRICATIONS).format(n=number, figure=figure)
        meta = {"behaviour": "abstain", "defect": "fabricated_figure"}
        return self._record(
            f"abstain-{row['id']}", prompt, rng.choice(ABSTAIN_REPLIES), rejected, meta
        )

    def _abstain_without_gold(self, index, asked: list[dict]) -> list:
        """Abstain rows from answerable questions whose gold section is taken out of the
        retrieval: the next notes retrieval returns do not answer them, so the reply
        says so. Beside the grounded rows of the same questions, they teach the answer
        to follow the notes in the prompt, not the model's memory."""
        config = self.config
        found = index.search_many(
            [row["question"] for row in asked], k=config.k + 8, mode=config.mode
        )
        rows = []
        for row, hits in zip(asked, found, strict=True):
            others = [hit for hit in hits if not _is_gold(hit, row)][: config.k]
            if len(others) == len(hits):  # no gold section retrieved: nothing was taken out
                continue
            rows.append(self._abstain(index, {**row, "id": f"nogold-{row['id']}"}, others))
        return rows

    def _hint(self, problem: Problem, hits: list):
        rng = self._rng("hint", problem.uid)
        reply = hint_reply(problem, rng)
        if reply is None:
            self.dropped["hint_gives_answer"] += 1
            return None
        prompt, _ = self._prompt(problem.question, hits, "hint")
        if rng.random() < 0.5:
            rejected = explain_reply(problem)
        else:
            rejected = f"{reply}\nThe answer is {problem.final}."
        meta = {"behaviour": "hint", "defect": "gives_answer", "final": problem.final}
        return self._record(f"hint-{problem.uid}", prompt, reply, rejected, meta)

    def _explain(self, problem: Problem, hits: list):
        rng = self._rng("explain", problem.uid)
        prompt, _ = self._prompt(problem.question, hits, "tutor")
        if rng.random() < 0.5:
            rejected, defect = f"The answer is {problem.final}.", "bare_answer"
        else:
            rejected, defect = rng.choice("ABCD"), "letter"
        meta = {"behaviour": "explain", "defect": defect, "final": problem.final}
        return self._record(
            f"explain-{problem.uid}", prompt, explain_reply(problem), rejected, meta
        )

    def group_namespace(self) -> str:
        return f"source:{self.name}"

    def fingerprint(self) -> dict:
        root = assets_root(self.config.notes)
        files = sorted((root / "notes").glob("*.md")) + [root / "notes_questions.jsonl"]
        found = {f.name: file_sha256(f) for f in files if f.is_file()}
        retrieval = ("k", "mode", "budget_tokens", "chunk_tokens", "chunk_overlap")
        return found | {
            "retrieval": {key: getattr(self.config, key) for key in retrieval},
            "embedding_model": self.config.embedding_model,
            "tokenizer": self.config.tokenizer or self.model,
            "reasoning-gym": package_version("reasoning-gym"),
            "champ-dataset": package_version("champ-dataset"),
        }
