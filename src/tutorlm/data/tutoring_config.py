"""The ``tutoring`` source of a data section: rows that teach the served tutor's behaviours.

Every row is asked in the served tutor's own prompt (``tutorlm.rag.prompt.tutor_messages``),
so what the model is trained on is what it is asked when served. docs/tutoring.md
describes each behaviour, the split of the notes questions and the eval items::

    - type: tutoring
      name: tutor_sft
      records: sft
      behaviours: [grounded, abstain, hint, explain]
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Behaviour = Literal["grounded", "abstain", "hint", "explain"]
SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class TutoringSource(BaseModel):
    """Tutoring rows built from the course notes and worked problems.

    Fields other than the tutoring ones mirror the other sources' (``name``, ``cap``,
    ``count``, ``to_split``), which the build reads from every source.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["tutoring"]
    name: str = Field(pattern=SOURCE_NAME)
    """Unique name of the source: record ids, ``source`` fields and the manifest use it."""
    records: Literal["sft", "preference"] = "sft"
    """``sft``: prompt and reference reply. ``preference``: the reference as chosen
    and a reply with the behaviour's defect as rejected. Must match the section."""
    behaviours: list[Behaviour] = Field(
        default_factory=lambda: ["grounded", "abstain", "hint", "explain"], min_length=1
    )
    """``grounded``: notes questions answered from the right note, cited as ``[n]``;
    ``abstain``: questions the notes do not answer, answered by saying so; ``hint``:
    worked problems in hint mode, answered by a first step without the answer;
    ``explain``: the same kind of problems in tutor mode, answered step by step."""
    abstain_without_gold: bool = False
    """Also make abstain rows from the training notes questions, asked with the notes
    retrieval returns once their gold section is taken out: the reply says the notes do
    not cover it. More abstain rows than the unanswerable questions give, and a lesson
    in answering from the notes given rather than from memory."""
    notes: str | None = None
    """Folder holding ``notes/*.md`` and ``notes_questions.jsonl``; the bundled
    ``tutorlm/assets`` if unset."""
    test_share: float = Field(default=0.25, gt=0.0, lt=1.0)
    """Share of the notes' Q&A questions held out for evaluation (by a hash of the id)."""
    abstain_test_share: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Share of the unanswerable questions held out for evaluation."""
    generators: list[str] = Field(
        default_factory=lambda: [
            "basic_arithmetic",
            "chain_sum",
            "simple_equations",
            "gcd",
            "lcm",
            "prime_factorization",
            "gsm_symbolic",
        ]
    )
    """reasoning-gym generators with worked solutions (``rg_worked.WORKED``) for the
    hint and explain rows."""
    per_generator: int = Field(default=12, ge=0)
    """Problems drawn from each generator for the hint and explain rows."""
    options: dict[str, dict] = Field(default_factory=dict)
    """Generator name -> keyword arguments of its config (difficulty...)."""
    champ: int = Field(default=20, ge=0)
    """CHAMP problems (training share of its hash split) for the hint and explain rows."""
    k: int | None = Field(default=None, ge=1)
    """Notes retrieved per question; None: the recipe's ``rag.k`` (as served)."""
    mode: Literal["dense", "bm25", "hybrid"] | None = None
    """Search mode; None: the recipe's ``rag.mode``. ``bm25`` needs no embedding model
    at build time; ``hybrid`` is what the served tutor uses by default."""
    budget_tokens: int | None = Field(default=None, ge=32)
    """Most tokens of the model's tokenizer the notes may take; None: ``rag.budget_tokens``."""
    chunk_tokens: int | None = Field(default=None, ge=16)
    """Chunk size in embedding-model tokens; None: ``rag.chunk_tokens``, so the chunks in a
    training prompt are the served index's chunks."""
    chunk_overlap: int | None = Field(default=None, ge=0)
    """Tokens shared by consecutive chunks; None: ``rag.chunk_overlap``."""
    embedding_model: str | None = None
    """Whose tokenizer cuts the chunks (and, for dense and hybrid search, who embeds);
    None: ``rag.embedding_model``."""
    missing_gold: Literal["insert", "drop"] = "insert"
    """A grounded question whose retrieval missed its gold section: ``insert`` puts the
    gold section's best chunk in place of the last hit; ``drop`` leaves the question out
    (counted as ``gold_not_retrieved``)."""
    tokenizer: str | None = None
    """Model spec whose tokenizer counts the notes budget; the recipe's model if unset."""
    seed: int | None = None
    """Seed of the phrasings and rejected replies; the build's seed if unset."""
    cap: int | None = Field(default=None, ge=1)
    """Keep at most this many rows, drawn at random."""
    count: int | None = Field(default=None, ge=1)
    """Keep exactly this many rows, drawn at random; fewer is an error."""
    to_split: Literal["train", "val", "test"] | None = None
    """Put every row of this source in one split instead of splitting it by ratio."""

    def retrieving_as(self, rag) -> TutoringSource:
        """This source with its unset retrieval settings taken from a recipe's ``rag``
        section (or any object with the same fields), so that the rows are asked
        exactly as the served tutor asks; settings given here stay."""
        keys = ("k", "mode", "budget_tokens", "chunk_tokens", "chunk_overlap", "embedding_model")
        unset = {key: getattr(rag, key) for key in keys if getattr(self, key) is None}
        return self.model_copy(update=unset)
