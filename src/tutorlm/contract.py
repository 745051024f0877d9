"""What each stage of a run reads and writes, declared once.

A stage's *contract* names the recipe keys its result depends on, the stages whose
outputs it reads, the files it writes (through the run's :class:`RunLayout`) and
when a recipe asks for it at all. Everything that must know "did this stage's
inputs change?" derives from it, so the answers cannot drift apart:

- ``tutorlm run``'s cache key of a stage (``pipeline/runner.py``): its settings
  and the fingerprints of the stages it comes after;
- ``tutorlm sweep``'s sharing of stages between variants: a stage is shared when
  neither its settings nor those of any stage upstream of it differ;
- the training fingerprint a checkpoint must match to be resumed
  (``train/stage.py``), and the data build's cache key (``data/build.py``).

Keys are dotted paths into the resolved recipe (``train.sft`` is the whole
``train.sft`` mapping). A setting that only changes how fast a result comes
(``train.threads``, ``eval.batch_size``, every ``generation`` key but
``generation.samples``: the engine and its batch) is left out on purpose: changing it
re-runs nothing.

Worked example: ``train.beta`` is read by ``dpo`` only, so a sweep over
``train.beta=0.1,0.4`` shares ``data``, ``sft``, ``eval-m0`` and ``eval-m1`` between
the variants and trains two M2s; ``train.lora.r`` is read by both training
stages, so it shares only ``data`` and ``eval-m0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tutorlm.layout import RunLayout


def value_at(data: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` in nested mappings, or ``None`` where it is absent."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True)
class StageContract:
    """One stage's declaration.

    Attributes:
        name: the stage's name (``--from`` / ``--only``, ``pipeline.json``).
        reads: dotted recipe keys its result depends on; ``*`` is the whole recipe.
        after: stages whose outputs it reads.
        outputs: the files and folders it writes, from the run's layout.
        enabled: whether a recipe (as a resolved dict) asks for this stage.
        every_process: launched as several processes (``accelerate launch``), every
            process runs it together (training, evaluation); otherwise the main
            process runs it alone while the others wait for its result.
    """

    name: str
    reads: tuple[str, ...]
    after: tuple[str, ...] = ()
    outputs: Callable[[RunLayout], tuple[Path, ...]] = lambda layout: ()
    enabled: Callable[[Mapping[str, Any]], bool] = lambda recipe: True
    every_process: bool = False

    def settings(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """The values of :attr:`reads` in a resolved recipe (``Recipe.to_dict()``)."""
        if self.reads == ("*",):
            return dict(recipe)
        return {key: value_at(recipe, key) for key in self.reads}


def _sft_on(recipe: Mapping[str, Any]) -> bool:
    return (
        value_at(recipe, "data.sft") is not None
        or value_at(recipe, "train.sft_train_file") is not None
    )


def _dpo_on(recipe: Mapping[str, Any]) -> bool:
    pairs = (
        value_at(recipe, "data.prefs") is not None
        or value_at(recipe, "train.prefs_train_file") is not None
    )
    return pairs and (_sft_on(recipe) or value_at(recipe, "train.dpo_start") == "m0")


def dpo_start(recipe: Mapping[str, Any]) -> str:
    """The model DPO starts from (and scores its reward against): ``M1``, or ``M0`` with
    ``train.dpo_start: m0`` or when the recipe has no SFT stage."""
    return "M1" if _sft_on(recipe) and value_at(recipe, "train.dpo_start") != "m0" else "M0"


def _quantize_on(recipe: Mapping[str, Any]) -> bool:
    return _dpo_on(recipe) and bool(value_at(recipe, "quantize.methods"))


def _rag_on(recipe: Mapping[str, Any]) -> bool:
    return _dpo_on(recipe) and bool(value_at(recipe, "rag.sources"))


_BASE = ("model", "chat_template", "seed")
_LORA = ("train.lora", "train.qlora")
_EVAL = (
    "eval.tasks",
    "eval.judge",
    "eval.tutor_limit",
    "eval.tutor_max_new_tokens",
    "eval.dtype",
    "eval.recheck_margin",
    "eval.mcqa_method",
    "eval.shots",
    "eval.chat",
    "eval.max_questions",
    "eval.bootstrap_resamples",
    "eval.perplexity_window",
    "eval.perplexity_stride",
    "eval.perplexity_files",
    "eval.reward_dtype",
    "eval.reward_beta",
    "eval.reward_reference",
    "eval.generation_file",
    "eval.generation_max_new_tokens",
    "eval.generation_limit",
    "eval.choice_file",
)
"""The ``eval`` keys a score depends on (not ``threads`` nor ``batch_size``)."""

SFT_KEYS = (*_BASE, *_LORA, "train.sft", "train.sft_train_file", "train.sft_val_file")
DPO_KEYS = (
    *_BASE,
    *_LORA,
    "train.dpo_lora",
    "train.loss",
    "train.beta",
    "train.eps",
    "train.dpo_start",
    "train.dpo_split_pairs",
    "train.precompute_ref_logps",
    "train.dpo",
    "train.prefs_train_file",
    "train.prefs_val_file",
)


_RETRIEVAL = (
    "rag.k",
    "rag.mode",
    "rag.budget_tokens",
    "rag.chunk_tokens",
    "rag.chunk_overlap",
    "rag.embedding_model",
)
"""How the served tutor retrieves: tutoring rows (data) and tutor tasks (eval) ask so."""


def _eval(label: str, after: str, enabled) -> StageContract:
    return StageContract(
        f"eval-{label.lower()}",
        reads=(*_BASE, *_EVAL, *_RETRIEVAL),
        after=(after, "data") if after != "data" else ("data",),
        outputs=lambda layout: (layout.eval_results(label),),
        enabled=enabled,
        every_process=True,
    )


CONTRACTS: dict[str, StageContract] = {
    contract.name: contract
    for contract in (
        StageContract(
            "data",
            reads=(*_BASE, "data", *_RETRIEVAL),
            outputs=lambda layout: (layout.data_manifest,),
        ),
        StageContract(
            "sft",
            reads=SFT_KEYS,
            after=("data",),
            outputs=lambda layout: (layout.merged("sft"),),
            enabled=_sft_on,
            every_process=True,
        ),
        StageContract(
            "dpo",
            reads=DPO_KEYS,
            after=("sft", "data"),
            outputs=lambda layout: (layout.merged("dpo"),),
            enabled=_dpo_on,
            every_process=True,
        ),
        _eval("M0", "data", lambda recipe: True),
        _eval("M1", "sft", _sft_on),
        _eval("M2", "dpo", _dpo_on),
        StageContract(
            "quantize",
            reads=(*_BASE, *_EVAL, "quantize"),
            after=("dpo", "data"),
            outputs=lambda layout: (layout.quantize_table,),
            enabled=_quantize_on,
        ),
        StageContract(
            "rag",
            reads=(*_BASE, *_EVAL, "rag"),
            after=("dpo", "data"),
            outputs=lambda layout: (layout.ablation_table, layout.index),
            enabled=_rag_on,
        ),
        StageContract(
            "samples",
            reads=(*_BASE, "generation.samples"),
            after=("dpo", "data"),
            outputs=lambda layout: (layout.samples,),
            enabled=_dpo_on,
        ),
        StageContract(
            "report",
            reads=("*",),
            after=(
                "data",
                "sft",
                "dpo",
                "eval-m0",
                "eval-m1",
                "eval-m2",
                "quantize",
                "rag",
                "samples",
            ),
            outputs=lambda layout: (layout.report_html, layout.report_md),
        ),
    )
}
"""Every stage of a run, in the order ``tutorlm run`` runs them."""


def contract(name: str) -> StageContract:
    """The contract of stage ``name``.

    Raises:
        KeyError: an unknown stage, with the known ones.
    """
    if name not in CONTRACTS:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(CONTRACTS)}")
    return CONTRACTS[name]


def upstream(name: str) -> list[str]:
    """Every stage ``name`` depends on, directly or through others, nearest first."""
    seen: list[str] = []
    pending = list(contract(name).after)
    while pending:
        current = pending.pop(0)
        if current not in seen:
            seen.append(current)
            pending.extend(contract(current).after)
    return seen


def shareable(donor: Mapping[str, Any], recipe: Mapping[str, Any]) -> list[str]:
    """The stages whose results two recipes (resolved dicts, under the same run name)
    share: neither their settings nor those of any stage upstream of them differ."""
    same = {name: item.settings(donor) == item.settings(recipe) for name, item in CONTRACTS.items()}
    return [name for name in CONTRACTS if same[name] and all(same[up] for up in upstream(name))]
