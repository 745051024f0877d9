"""The ``quantize`` section of a recipe: settings of the quantization stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tutorlm.evaluate.config import EVAL_SET_TASK, TASKS
from tutorlm.quantize.measure import DEFAULT_PROMPT
from tutorlm.quantize.methods import METHODS

#: Why a quantized row runs no generation task: each row already times greedy
#: generation, and BLEU / ROUGE of hundreds of generated answers per row would cost
#: more than every other column together; the eval stage scores them for M2.
NO_GENERATION = (
    "generation tasks are not run on the quantize table's rows (each row times greedy "
    "generation already, and generating every answer again per row costs more than all "
    "other columns together); `tutorlm eval` scores them"
)


def task_refusal(name: str) -> str | None:
    """Why a quantized row cannot run the eval task ``name`` (None: it can)."""
    if name == "generation" or name.startswith("generation:"):
        return NO_GENERATION
    return None


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
    baseline_models: list[str] = Field(default_factory=list)
    """More such baselines, each a row (after ``baseline_model``). A baseline whose
    directory does not exist yet (its sweep variant has not run) is listed as not
    measured, with why."""
    embeddings: bool = True
    """Packed methods: also quantize the token embedding and output layer (int8,
    stored once when tied). They are a fifth of SmolLM2-135M's weights."""
    tasks: list[str] | None = None
    """Accuracy columns, named as ``eval.tasks`` names them (``mcqa:<set>``, ``reward``,
    ``reward:<set>``, ``choice:<set>``, ``perplexity_notes``, ``mmlu_stem``, ...) and
    computed exactly as ``tutorlm eval`` does (same files, scorer and ``eval``
    settings); None: the recipe's ``eval.tasks`` less the generation tasks. A task
    whose file is missing is left out, with why."""
    task_labels: dict[str, str] = Field(default_factory=dict)
    """Column names for tasks (``{perplexity_notes: WikiText-2}``); default the task's name."""
    max_questions: int | None = Field(default=None, ge=1)
    """MCQA questions and preference pairs per set for every row. None: as
    ``tutorlm eval`` (``eval.max_questions``); else the smaller of the two."""
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

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        return names

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, names: list[str] | None) -> list[str] | None:
        """The eval stage's task names (``evaluate.config``), less the generation tasks."""
        if names is None:
            return None
        unknown = [name for name in names if name not in TASKS and not EVAL_SET_TASK.match(name)]
        if unknown:
            raise ValueError(
                f"unknown task(s) {unknown}; known: the eval task names "
                f"({', '.join(TASKS)}, or <kind>:<eval set>)"
            )
        refused = [name for name in names if task_refusal(name)]
        if refused:
            raise ValueError(f"task(s) {refused}: {NO_GENERATION}")
        return names

    def baselines(self) -> list[str]:
        """Every baseline model: ``baseline_model`` first, then ``baseline_models``."""
        return [*([self.baseline_model] if self.baseline_model else []), *self.baseline_models]
