"""Every path of a run, in one place.

A run directory (``<run_root>/<name>/``) holds what each stage wrote::

    recipe.yaml  pipeline.json  report.md  report.html  report_files/  samples.json
    data/        manifest.json, sft.{train,val}.jsonl, prefs.{train,val,test}.jsonl,
                 mcqa.{train,test}.jsonl, mmlu_stem.jsonl ...
    sft/         M1: checkpoints, adapter/, merged/, metrics.jsonl
    dpo/         M2: the same
    eval/<m0|m1|m2|label>/results.json
    quantize/    compare.md, models/<method>/
    rag/         index/ (unless rag.index_dir says elsewhere), ablation.md

Nothing else in tutorlm joins paths under a run directory: a stage asks its
:class:`RunLayout` (``recipe.layout``) for the file it reads or writes, so renaming
a file is a one-line change here and every reader follows.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

#: The three models of a run: the base, after SFT, after DPO.
MODEL_LABELS = ("M0", "M1", "M2")

#: The training stage whose merged model is each trained model.
_TRAINED_BY = {"M1": "sft", "M2": "dpo"}


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run.

    Attributes:
        run_dir: ``<run_root>/<name>``.
        base_model: M0's spec (a bundled name, a local folder or a hub id); not a path
            under the run, but a model of it.
        index_dir: ``rag.index_dir`` when the recipe puts the notes index elsewhere.
        data_files: recipe keys that point a data file elsewhere, by file name
            (``{"sft.train.jsonl": "my/sft.jsonl"}``, from ``train.sft_train_file`` ...).
    """

    run_dir: Path
    base_model: str = ""
    index_dir: str | None = None
    data_files: dict[str, str] = field(default_factory=dict)

    # -- the run as a whole ---------------------------------------------------------

    @property
    def recipe_file(self) -> Path:
        """The resolved recipe the run was made from."""
        return self.run_dir / "recipe.yaml"

    @property
    def pipeline_record(self) -> Path:
        """What each stage of ``tutorlm run`` did, with its cache key."""
        return self.run_dir / "pipeline.json"

    @property
    def report_md(self) -> Path:
        return self.run_dir / "report.md"

    @property
    def report_html(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def report_files(self) -> Path:
        """Plots and other files the report links to."""
        return self.run_dir / "report_files"

    @property
    def samples(self) -> Path:
        """Sample answers of M0 and M2 shown in the report."""
        return self.run_dir / "samples.json"

    def relocate(self, path: Path, other: RunLayout) -> Path:
        """Where ``path``, a file of the ``other`` run, lives in this run."""
        return self.run_dir / Path(path).relative_to(other.run_dir)

    # -- data ------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def data_manifest(self) -> Path:
        return self.data_dir / "manifest.json"

    def data(self, name: str) -> Path:
        """A built data file (``sft.train.jsonl`` ...), or the file the recipe put in
        its place (``train.sft_train_file`` ...)."""
        configured = self.data_files.get(name)
        return Path(configured) if configured else self.data_dir / name

    # -- models ------------------------------------------------------------------------

    def stage_dir(self, stage: str) -> Path:
        """Output folder of a training stage (``sft`` or ``dpo``)."""
        return self.run_dir / stage

    def merged(self, stage: str) -> Path:
        """The merged model a training stage writes (M1 for ``sft``, M2 for ``dpo``)."""
        return self.stage_dir(stage) / "merged"

    def metrics(self, stage: str) -> Path:
        """Training log of a stage, one JSON object a line."""
        return self.stage_dir(stage) / "metrics.jsonl"

    def adapter(self, stage: str) -> Path:
        """The LoRA adapter a training stage saves before merging it."""
        return self.stage_dir(stage) / "adapter"

    def tensorboard(self, stage: str) -> Path:
        return self.stage_dir(stage) / "tensorboard"

    def train_summary(self, stage: str) -> Path:
        """Steps, losses and timings of a finished training stage."""
        return self.stage_dir(stage) / "train_summary.json"

    def training_outputs(self, stage: str) -> tuple[Path, ...]:
        """What one training run writes besides its checkpoints (cleared before a fresh run)."""
        return (
            self.metrics(stage),
            self.tensorboard(stage),
            self.train_summary(stage),
            self.adapter(stage),
            self.merged(stage),
        )

    def model(self, label: str) -> str:
        """The model spec of ``M0``, ``M1`` or ``M2``."""
        if label == "M0":
            return self.base_model
        if label not in _TRAINED_BY:
            raise KeyError(f"unknown model {label!r}; models are {', '.join(MODEL_LABELS)}")
        return str(self.merged(_TRAINED_BY[label]))

    def final_model(self) -> str:
        """The last model the run has trained so far: M2, else M1, else the base M0."""
        for label in ("M2", "M1"):
            if (Path(self.model(label)) / "config.json").is_file():
                return self.model(label)
        return self.base_model

    def models(self) -> dict[str, str]:
        """``{"M0": base, "M1": <run>/sft/merged, "M2": <run>/dpo/merged}``."""
        return {label: self.model(label) for label in MODEL_LABELS}

    # -- evaluation, quantization, retrieval ---------------------------------------------

    def eval_dir(self, label: str) -> Path:
        """Where one model's evaluation goes (``eval/m2``; any label, lower-cased)."""
        return self.run_dir / "eval" / label.lower()

    def eval_results(self, label: str) -> Path:
        return self.eval_dir(label) / "results.json"

    @property
    def quantize_dir(self) -> Path:
        return self.run_dir / "quantize"

    @property
    def quantized_models(self) -> Path:
        """One folder per quantization method that writes a model."""
        return self.quantize_dir / "models"

    @property
    def quantize_table(self) -> Path:
        """The quantize stage's comparison (``compare.md``; ``compare.json`` beside it)."""
        return self.quantize_dir / "compare.md"

    def served_choice(self) -> Path:
        """``served.json``: the model the run hands to ``chat`` / ``serve`` and why
        (written with the report, read by ``serve --recipe`` and ``chat --recipe``)."""
        return self.run_dir / "served.json"

    def quantized_model(self, method: str) -> Path:
        """The quantize stage's copy of the run's model made by ``method``
        (``quantize/models/int8-packed``); ``serve``, ``chat`` and ``ask`` load it."""
        return self.quantized_models / method

    @property
    def quantize_plot(self) -> Path:
        return self.quantize_dir / "compare.png"

    @property
    def ablation_table(self) -> Path:
        """The RAG ablation's table (``ablation.md``; ``ablation.json`` beside it)."""
        return self.rag_dir / "ablation.md"

    @property
    def ablation_plot(self) -> Path:
        return self.rag_dir / "ablation.png"

    @property
    def rag_dir(self) -> Path:
        """The RAG ablation's outputs."""
        return self.run_dir / "rag"

    @property
    def index(self) -> Path:
        """The notes index chat and serve use: ``rag.index_dir``, else ``rag/index``."""
        return Path(self.index_dir) if self.index_dir else self.rag_dir / "index"


def tutor_commands(model: str | Path, index: str | Path | None = None) -> dict[str, str]:
    """The shell commands that chat with and serve a model (``--rag DIR`` with an index),
    for reports, docs and the end of ``tutorlm run``."""
    rag = ["--rag", str(index)] if index is not None else []
    return {
        command: shlex.join(["tutorlm", command, "--model", str(model), *rag])
        for command in ("chat", "serve")
    }
