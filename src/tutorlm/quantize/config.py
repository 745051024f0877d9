"""The ``quantize`` section of a recipe: settings of the quantization stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tutorlm.quantize.measure import DEFAULT_PROMPT
from tutorlm.quantize.methods import METHODS

#: Accuracy columns the comparison can fill, as named by the evaluate stage.
COMPARE_TASKS = ("perplexity_notes", "mmlu_stem", "mcqa_test", "reward")


class QuantizeConfig(BaseModel):
    """Settings of the quantization stage."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(
        default_factory=lambda: [
            "int8-packed",
            "int4-packed",
            "int8-weight",
            "int8-dynamic",
            "int4-weight",
        ]
    )
    """Methods in the comparison, and written by ``tutorlm quantize`` when no
    ``--method`` is given (see ``tutorlm.quantize.methods.METHODS``). GPU-only
    methods (``bnb-int8``, ``bnb-nf4``) are listed as skipped on a CPU machine."""
    model: str | None = None
    """Model to quantize; None means the run's DPO model (``<run_dir>/dpo/merged``),
    else its SFT model, else the recipe's base model. An adapter directory is
    merged into its fp32 base first."""
    references: list[Literal["float32", "bfloat16"]] = Field(
        default_factory=lambda: ["float32", "bfloat16"]
    )
    """Unquantized rows of the table: the same model held in these precisions."""
    baseline_model: str | None = None
    """A smaller fine-tuned model that joins the table unquantized (ProbLLMs' baseline:
    is a quantized big model better than a small model of the same size?)."""
    embeddings: bool = True
    """Packed methods: also quantize the token embedding and output layer (int8,
    stored once when tied). They are a fifth of SmolLM2-135M's weights."""
    tasks: list[str] = Field(default_factory=lambda: list(COMPARE_TASKS))
    """Accuracy columns, computed exactly as ``tutorlm eval`` does (same files,
    scorer and ``eval`` settings); a task whose file is missing is left blank."""
    max_questions: int | None = Field(default=200, ge=1)
    """MCQA questions and preference pairs per set for every row (None: all). The
    smaller of this and ``eval.max_questions`` is used."""
    new_tokens: int = Field(default=64, ge=1)
    """Tokens generated per timed run (greedy, batch size 1)."""
    repeats: int = Field(default=3, ge=1)
    """Timed generation runs per row; the median is reported."""
    prompt: str = DEFAULT_PROMPT
    """The user message the timed generations answer (through the chat template)."""
    isolate: bool = True
    """Measure every row in its own fresh process, so peak RSS is that row's alone.
    False runs all rows in one process (faster; the RSS column is then left blank)."""
    threads: int | None = Field(default=None, ge=1)
    """torch threads in every row (None: torch's default, one per core)."""

    @field_validator("methods", "tasks")
    @classmethod
    def _known_names(cls, names: list[str], info) -> list[str]:
        known = METHODS if info.field_name == "methods" else COMPARE_TASKS
        unknown = [name for name in names if name not in known]
        if unknown:
            what = "method(s)" if info.field_name == "methods" else "task(s)"
            raise ValueError(f"unknown {what} {unknown}; known: {', '.join(known)}")
        return names
