"""The ``eval`` section of a recipe: settings of the evaluation stage."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Tasks a recipe can ask for, and what each reads under ``<run_dir>/data/``.
TASKS = {
    "mmlu_stem": "MCQA accuracy on mmlu_stem.jsonl (500 MMLU STEM questions)",
    "mcqa_test": "MCQA accuracy on mcqa.test.jsonl (the recipe's own MCQA test split)",
    "perplexity_notes": "token-level perplexity on the course notes",
    "reward": "reward accuracy on prefs.test.jsonl against the reference model",
    "generation": "BLEU-4 / ROUGE / exact match of generated answers on generation_file",
    "choice": "HellaSwag-style acc / acc_norm on choice_file",
    "tutor": "every tutor:* task on the held-out tutoring items, in the served tutor's prompt",
    "tutor:grounded": "share of notes questions whose reply holds the canonical answer",
    "tutor:citation_precision": "share of notes replies citing a note, every [n] in the prompt",
    "tutor:citation_correctness": "share of notes replies citing a note of the gold section",
    "tutor:abstention": "share of questions the notes do not cover answered by saying so",
    "tutor:hint_leakage": "share of hint-mode replies that keep the final answer back",
    "tutor:explanation": "share of tutor-mode replies with >= 2 steps and the right answer",
    "tutor:letter_collapse": "share of free questions answered by a bare letter (lower is better)",
}

#: Task kinds that may also run on any ``data.eval_sets`` file, named ``<kind>:<set>``
#: (``mcqa:arc`` reads ``<run_dir>/data/arc.jsonl``): the reports evaluate on several
#: named sets (ProbLLMs: ARC, MMLU, GSM8K-MCQA, MATH-MCQA; ZEPHYR: HellaSwag, GSM8K).
EVAL_SET_KINDS = {
    "mcqa": "MCQA accuracy on an MCQA eval set",
    "choice": "acc / acc_norm on an MCQA eval set scored as choice completion (HellaSwag)",
    "generation": "BLEU-4 / ROUGE on an SFT eval set's last assistant turns",
    "reward": "reward accuracy on a preference eval set",
}
EVAL_SET_TASK = re.compile(rf"^({'|'.join(EVAL_SET_KINDS)}):([A-Za-z0-9_-]+)$")


class JudgeConfig(BaseModel):
    """Which model judges, where it runs, and how it is asked (``eval.judge`` of a recipe)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """The judge's model id on the endpoint (None: the first ``GET /v1/models`` lists),
    or, without ``url``, a local model spec (bundled name, directory, hub id)."""
    url: str | None = None
    """The OpenAI-compatible endpoint (``http://host:port`` or ``.../v1``); None: run
    ``model`` locally through tutorlm's bulk generation (in a pinch: slow, small)."""
    api_key_env: str | None = None
    """Environment variable holding the endpoint's API key (sent as a Bearer token);
    the key itself is never written to a recipe or a record."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Longest wait for one judge reply."""
    retries: int = Field(default=3, ge=0)
    """Requests retried after a timeout, a lost connection, 429 or 5xx."""
    backoff_s: float = Field(default=1.0, ge=0)
    """Wait before the first retry, doubled before each next one."""
    concurrency: int = Field(default=4, ge=1)
    """Judge requests in flight at once."""
    max_tokens: int = Field(default=96, ge=8)
    """Longest judge reply: a verdict line and a one-sentence reason."""
    temperature: float = Field(default=0.0, ge=0)
    """First ask's temperature (0: greedy, the same verdict every run)."""
    parse_retries: int = Field(default=2, ge=0)
    """Asks again when the output has no ``Verdict:`` line it can read."""
    retry_temperature: float = Field(default=0.7, ge=0)
    """Temperature of those asks: greedy decoding would write the same output again."""
    use_reference: bool = True
    """Show the judge the reference answer when the replies' files carry one."""
    device: str = "auto"
    """Local judge only: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""


class EvalConfig(BaseModel):
    """Settings of the evaluation stage."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=lambda: ["mmlu_stem", "mcqa_test", "perplexity_notes"])
    """Tasks run by ``tutorlm eval RECIPE`` when ``--tasks`` is not given (see ``TASKS``),
    and ``<kind>:<eval set>`` for a ``data.eval_sets`` file (see ``EVAL_SET_KINDS``)."""
    batch_size: int = Field(default=8, ge=1)
    """Inputs per forward pass."""
    device_map: Literal["auto"] | None = None
    """``auto``: spread one model too large for a GPU over every visible GPU (then CPU
    memory, then disk) with accelerate's big-model dispatch, in one process; None: the
    whole model on ``device`` (under ``accelerate launch``, one copy per process)."""
    max_memory: dict[int | str, int | str] | None = None
    """With ``device_map``, the most each device may hold, e.g. ``0=70GiB,1=70GiB,cpu=200GiB``
    (GPU index, ``cpu`` or ``disk``); None: all that is free."""
    threads: int | Literal["auto"] = "auto"
    """torch threads on CPU; ``auto``: the free cores (fewer under load, where OpenMP
    threads sharing a core spin at every barrier), or ``OMP_NUM_THREADS``."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' precision while scoring; ``auto`` is bf16 where the hardware has fast
    bf16 matmuls (CUDA, AVX512-BF16/AMX CPUs) and fp32 elsewhere."""
    recheck_margin: float = Field(default=0.5, ge=0)
    """When scoring in bf16/fp16, re-score in float32 the MCQA questions whose two best
    choices are within this many nats, so predictions match a float32 run (0: never)."""
    mcqa_method: Literal["letter", "choice"] = "letter"
    """``letter``: letters' log-probabilities after "Answer:" (lm-eval ``mmlu``);
    ``choice``: full-choice log-likelihood with acc and acc_norm (lm-eval ``mmlu_continuation``)."""
    shots: int = Field(default=0, ge=0)
    """Solved examples before each MCQA question (same subject first)."""
    chat: bool = False
    """Render MCQA prompts through the model's chat template."""
    max_questions: int | None = Field(default=None, ge=1)
    """Score only the first N questions / pairs / items of each set (quick runs)."""
    bootstrap_resamples: int = Field(default=1000, ge=0)
    """Bootstrap resamples behind every 95 % interval (0: no intervals)."""
    perplexity_window: int = Field(default=1024, ge=2)
    """Tokens per forward pass when computing perplexity."""
    perplexity_stride: int = Field(default=512, ge=1)
    """Tokens newly scored by each window after the first."""
    perplexity_files: list[str] = Field(default_factory=list)
    """Text files or folders for ``perplexity_notes``; empty means the bundled course notes."""
    reward_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Precision of the reward task's policy and reference. A reward is a small
    difference between two models' log-probs summed over a whole reply, and bf16 noise
    flips pairs (the demo's M2 against M1: 0.941 in bf16, 1.000 in float32), so it runs
    in float32 unless told otherwise; ``auto`` follows ``dtype``."""
    reward_beta: float = Field(default=0.1, gt=0)
    """beta of the implicit DPO reward beta * (log pi - log pi_ref)."""
    reward_reference: str | None = None
    """Reference model of the reward (spec); None means the recipe's base model."""
    generation_file: str | None = None
    """SFT-format JSONL whose last assistant turns are the references (``generation``
    task); None means the run's held-out SFT split, ``<run_dir>/data/sft.val.jsonl``."""
    generation_max_new_tokens: int = Field(default=256, ge=1)
    """Longest generated answer, in tokens."""
    generation_limit: int | None = Field(default=None, ge=1)
    """Generate answers for only the first N items (generating is the slowest task)."""
    tutor_max_new_tokens: int = Field(default=192, ge=1)
    """Longest reply of the tutor tasks, in tokens (greedy)."""
    judge: JudgeConfig | None = None
    """A judge model comparing free-form replies pairwise (M2 against M0 on the tutor
    tasks, after the M2 evaluation); None: no judge (``docs/judge.md``)."""
    tutor_limit: int | None = Field(default=None, ge=1)
    """Ask only the first N held-out items of each tutor item kind (grounded, abstain,
    hint, explain, free); None asks them all."""
    choice_file: str | None = None
    """JSONL of ``{context, endings, label}`` items for the ``choice`` task."""

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory_per_device(cls, value):
        """``0=70GiB,cpu=200GiB`` (a flag) or a mapping; GPU indices and sizes in bytes
        become ints, as accelerate wants them."""
        if isinstance(value, str):
            pairs = [part.partition("=") for part in value.split(",") if part.strip()]
            if any(not sep or not size.strip() for _, sep, size in pairs):
                raise ValueError(
                    f"expected DEVICE=SIZE,... (e.g. 0=70GiB,cpu=200GiB); got {value!r}"
                )
            value = {key.strip(): size.strip() for key, _, size in pairs}
        if not isinstance(value, dict):
            return value
        memory = {}
        for key, size in value.items():
            text = str(key).strip().lower()
            if not (text.isdigit() or text in ("cpu", "disk")):
                raise ValueError(f"device {key!r} is not a GPU index, cpu or disk")
            if isinstance(size, str) and size.strip().isdigit():
                size = int(size)  # bytes; accelerate reads a string only with a unit
            memory[int(text) if text.isdigit() else text] = size
        return memory

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [task for task in tasks if task not in TASKS and not EVAL_SET_TASK.match(task)]
        if unknown:
            raise ValueError(
                f"unknown task(s) {unknown}; known: {', '.join(TASKS)}, "
                f"or <kind>:<eval set> with kind in {', '.join(EVAL_SET_KINDS)}"
            )
        return tasks
