"""Every hub dataset the three reports name, as a preset: id, config, split, shape,
column mapping, and a converter where the columns need more than renaming.

Column names were checked against each dataset's card or loading code; every
preset has fixture rows shaped exactly like the real dataset in
``tutorlm/data/fixtures/<fixture>.jsonl`` (see :func:`load_preset_fixture`).
Datasets the reports name whose columns could not be checked (ZEPHYR's "Math
College", "DPO Mix Zero Math Untoxic", "Exp DPO 3"; the private EPFL and MNLP
student pairs; the Kaggle CS theory QA) have no preset: load them as ``hub`` or
``jsonl`` sources with an explicit ``columns`` mapping.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources

from tutorlm.data.examples import DataError, Skip
from tutorlm.data.rules.text import last_boxed


@dataclass(frozen=True)
class HubPreset:
    """How to read one hub dataset."""

    dataset: str
    shape: str
    columns: dict[str, str]
    fixture: str
    report: str
    config: str | None = None
    split: str = "train"
    data_dir: str | None = None
    revision: str | None = None
    """Git revision to read; ``refs/convert/parquet`` for a repository that still holds
    a loading script (``datasets`` >= 4 refuses those, not the hub's Parquet copy)."""
    converter: str | None = None
    reads: tuple[str, ...] = ()
    """Columns the converter reads beyond the mapping (checked like the mapping)."""
    provides: tuple[str, ...] = ()
    """Fields the converter fills that the mapping therefore need not name."""
    html: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)


PARQUET = "refs/convert/parquet"
"""The branch where the hub keeps a Parquet copy of a dataset built by a script."""


def _gsm8k(row: dict, columns: dict) -> dict:
    """GSM8K answers end with "#### 72" and hold calculator notes like <<48/2=24>>."""
    answer = row["answer"].strip()
    match = re.search(r"####\s*(.+?)\s*$", answer)
    if not match:
        raise Skip("no_final_answer")
    final = match.group(1).replace(",", "").strip()
    steps = re.sub(r"<<[^>]*>>", "", answer[: match.start()]).strip()
    return {"answer": f"{steps}\nThe answer is {final}.", "final": final}


def _math(row: dict, columns: dict) -> dict:
    """MATH solutions put the final answer in the last box (:func:`last_boxed`)."""
    final = last_boxed(row["solution"])
    if final is None:
        raise Skip("no_final_answer")
    return {"final": final, "meta": {"level": row.get("level"), "type": row.get("type")}}


def _metamath(row: dict, columns: dict) -> dict:
    """MetaMathQA responses close with "The answer is: <final>"."""
    match = re.search(r"The answer is:?\s*(.+?)\s*$", row["response"].strip())
    return {"final": match.group(1) if match else None, "meta": {"type": row.get("type")}}


def _arc(row: dict, columns: dict) -> dict:
    """ARC choices are {text: [...], label: [...]}; answerKey is one of the labels
    (letters, or digits 1-4 in a few rows)."""
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise Skip("bad_label")
    return {"choices": list(row["choices"]["text"]), "label": labels.index(row["answerKey"])}


def _hellaswag_text(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: the WikiHow half carries ``[title]``,
    ``[header]``, ``[step]``, ``[substeps]`` markers that no model should score."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict, columns: dict) -> dict:
    """HellaSwag as lm-eval reads it: ``activity_label: ctx_a Ctx_b`` (``ctx_b``
    capitalised, since it opens a sentence) and the endings, all preprocessed by
    :func:`_hellaswag_text`; ``label`` is a digit string, empty in test."""
    if str(row["label"]).strip() == "":
        raise Skip("unlabeled")
    context = f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
    return {
        "question": _hellaswag_text(f"{row['activity_label']}: {context}"),
        "choices": [_hellaswag_text(ending) for ending in row["endings"]],
        "label": int(row["label"]),
        "subject": None,
    }


def _shp(row: dict, columns: dict) -> dict:
    """SHP: ``labels`` is 1 when comment A is preferred to comment B."""
    a_wins = int(row["labels"]) == 1
    chosen, rejected = (row["human_ref_A"], row["human_ref_B"])[:: 1 if a_wins else -1]
    scores = (row["score_A"], row["score_B"])[:: 1 if a_wins else -1]
    return {
        "chosen": chosen,
        "rejected": rejected,
        "meta": {"score_chosen": scores[0], "score_rejected": scores[1], "domain": row["domain"]},
    }


def _lima(row: dict, columns: dict) -> dict:
    """LIMA conversations are a list of strings, user and assistant turns alternating."""
    turns = list(row["conversations"])
    if len(turns) % 2:
        turns = turns[:-1]  # a closing user turn has no reply to learn
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


def _wiki_qa(row: dict, columns: dict) -> dict:
    """WikiQA lists candidate sentences; ``label`` 1 marks the ones that answer."""
    if int(row["label"]) != 1:
        raise Skip("not_an_answer")
    return {}


CONVERTERS = {
    "gsm8k": _gsm8k,
    "math": _math,
    "metamath": _metamath,
    "arc": _arc,
    "hellaswag": _hellaswag,
    "shp": _shp,
    "lima": _lima,
    "wiki_qa": _wiki_qa,
}

_ALPACA = {"question": "instruction", "context": "input", "answer": "output"}
_SE = {
    "id": "qid",
    "question": "question",
    "answers": "answers",
    "answer_text": "text",
    "answer_score": "pm_score",
}
_SHP = {"id": "post_id", "group": "post_id", "question": "history"}
_SHP_READS = ("human_ref_A", "human_ref_B", "labels", "score_A", "score_B", "domain")
_PAIR = {"question": "prompt", "chosen": "chosen", "rejected": "rejected"}


def _se(site: str, report: str) -> HubPreset:
    return HubPreset(
        "HuggingFaceH4/stack-exchange-preferences",
        "ranked",
        _SE,
        "stackexchange",
        report,
        data_dir=f"data/{site}",
        html=True,
        notes="score = log2(1 + upvotes) rounded, +1 if accepted; HTML bodies",
    )


def _se_votes(site: str, report: str) -> HubPreset:
    """A Stack Exchange site scored in estimated upvotes (:func:`estimated_votes`), for
    rules written in votes (ProbLLMs: chosen >= 10 upvotes, rejected 3-5)."""
    return HubPreset(
        "HuggingFaceH4/stack-exchange-preferences",
        "ranked",
        {**_SE, "answer_score": "votes"},
        "stackexchange",
        report,
        data_dir=f"data/{site}",
        html=True,
        converter="se_votes",
        notes="score = estimated upvotes, 2 ** (pm_score - accepted) - 1; HTML bodies",
    )


def estimated_votes(pm_score: float, accepted: bool) -> float:
    """The upvotes an H4 Stack Exchange answer had, estimated from its ``pm_score``.

    H4 stores ``round(log2(1 + upvotes))``, plus 1 for the accepted answer, and -1 when
    the votes are negative; the raw count is gone. ``2 ** (pm_score - accepted) - 1`` is
    the centre of the counts that round to that score (a score of 4 holds 11-21 votes,
    estimated 15; 3 holds 5-10, estimated 7; 2 holds 2-4, estimated 3). A negative score
    stays -1; an accepted answer with no upvotes is 0.
    """
    if pm_score < 0:
        return -1.0
    return max(2.0 ** (pm_score - (1 if accepted else 0)) - 1.0, 0.0)


def _se_votes_row(row: dict, columns: dict) -> dict:
    """Stack Exchange answers with a ``votes`` key beside their ``pm_score``."""
    answers = [
        {**answer, "votes": estimated_votes(float(answer["pm_score"]), bool(answer["selected"]))}
        for answer in row[columns.get("answers", "answers")] or []
    ]
    return {"answers": answers}


CONVERTERS["se_votes"] = _se_votes_row


def _shp_forum(forum: str) -> HubPreset:
    return HubPreset(
        "stanfordnlp/SHP",
        "pair",
        _SHP,
        "shp",
        "ZEPHYR",
        data_dir=forum,
        converter="shp",
        reads=_SHP_READS,
        provides=("chosen", "rejected"),
    )


PRESETS: dict[str, HubPreset] = {
    # ZEPHYR's SFT mix D_S (and D_L)
    "metamathqa": HubPreset(
        "meta-math/MetaMathQA",
        "qa",
        {"question": "query", "answer": "response"},
        "metamathqa",
        "ZEPHYR",
        converter="metamath",
        reads=("type",),
    ),
    "open_platypus": HubPreset(
        "garage-bAInd/Open-Platypus", "qa", _ALPACA, "open_platypus", "ZEPHYR"
    ),
    "mathinstruct": HubPreset(
        "TIGER-Lab/MathInstruct",
        "qa",
        {"question": "instruction", "answer": "output", "subject": "source"},
        "mathinstruct",
        "ZEPHYR",
    ),
    "lima": HubPreset(
        "GAIR/lima",
        "messages",
        {"messages": "conversations"},
        "lima",
        "ZEPHYR",
        revision=PARQUET,
        converter="lima",
        notes="gated on the hub; accept its terms first",
    ),
    "codealpaca": HubPreset("sahil2801/CodeAlpaca-20k", "qa", _ALPACA, "codealpaca", "ZEPHYR"),
    "glaive_code_assistant": HubPreset(
        "glaiveai/glaive-code-assistant",
        "qa",
        {"question": "question", "answer": "answer"},
        "glaive_code_assistant",
        "ZEPHYR",
    ),
    "goat": HubPreset(
        "tiedong/goat",
        "qa",
        {"question": "instruction", "answer": "output", "final": "answer"},
        "goat",
        "ZEPHYR",
    ),
    "arxiv_math_instruct": HubPreset(
        "ArtifactAI/arxiv-math-instruct-50k",
        "qa",
        {"question": "question", "answer": "answer"},
        "arxiv_math_instruct",
        "ZEPHYR",
    ),
    "cosmopedia_khanacademy": HubPreset(
        "HuggingFaceTB/cosmopedia",
        "qa",
        {"question": "prompt", "answer": "text"},
        "cosmopedia",
        "ZEPHYR",
        config="khanacademy",
    ),
    "magicoder_oss_instruct": HubPreset(
        "ise-uiuc/Magicoder-OSS-Instruct-75K",
        "qa",
        {"question": "problem", "answer": "solution"},
        "magicoder",
        "ZEPHYR",
    ),
    "wiki_qa": HubPreset(
        "microsoft/wiki_qa",
        "qa",
        {"group": "question_id", "question": "question", "answer": "answer"},
        "wiki_qa",
        "ZEPHYR",
        converter="wiki_qa",
        reads=("label",),
    ),
    # ZEPHYR's DPO mix
    "orca_dpo_pairs": HubPreset(
        "Intel/orca_dpo_pairs",
        "pair",
        {"system": "system", "question": "question", "chosen": "chosen", "rejected": "rejected"},
        "orca_dpo_pairs",
        "ZEPHYR",
    ),
    "truthy_dpo": HubPreset(
        "jondurbin/truthy-dpo-v0.1",
        "pair",
        {"id": "id", "system": "system", **_PAIR},
        "truthy_dpo",
        "ZEPHYR",
    ),
    "shp_askengineers": _shp_forum("askengineers"),
    "shp_askphysics": _shp_forum("askphysics"),
    "shp_askscience": _shp_forum("askscience"),
    "shp_explainlikeimfive": _shp_forum("explainlikeimfive"),
    "py_dpo": HubPreset("jondurbin/py-dpo-v0.1", "pair", _PAIR, "py_dpo", "ZEPHYR"),
    "h4rmony": HubPreset("neovalle/H4rmony_dpo", "pair", _PAIR, "h4rmony", "ZEPHYR"),
    "code_vulnerability_dpo": HubPreset(
        "CyberNative/Code_Vulnerability_Security_DPO",
        "pair",
        {"system": "system", "question": "question", "chosen": "chosen", "rejected": "rejected"},
        "code_vulnerability_dpo",
        "ZEPHYR",
    ),
    # EPFLLaMA and ProbLLMs: Stack Exchange (the H4 preferences dump)
    "stackexchange_math": _se("math.stackexchange.com", "EPFLLaMA, ProbLLMs"),
    "stackexchange_physics": _se("physics.stackexchange.com", "EPFLLaMA, ProbLLMs"),
    "stackexchange_cs": _se("cs.stackexchange.com", "EPFLLaMA, ProbLLMs"),
    "stackexchange_datascience": _se("datascience.stackexchange.com", "EPFLLaMA"),
    "stackoverflow": _se("stackoverflow.com", "ProbLLMs"),
    # ProbLLMs' thresholds are in upvotes: the same sites scored in estimated votes
    "stackexchange_math_votes": _se_votes("math.stackexchange.com", "ProbLLMs"),
    "stackexchange_physics_votes": _se_votes("physics.stackexchange.com", "ProbLLMs"),
    "stackexchange_cs_votes": _se_votes("cs.stackexchange.com", "ProbLLMs"),
    "stackoverflow_votes": _se_votes("stackoverflow.com", "ProbLLMs"),
    # ProbLLMs: question/answer sets corrupted into pairs
    "camel_math": HubPreset(
        "camel-ai/math",
        "qa",
        {"question": "message_1", "answer": "message_2", "subject": "sub_topic"},
        "camel",
        "ProbLLMs",
    ),
    "camel_physics": HubPreset(
        "camel-ai/physics",
        "qa",
        {"question": "message_1", "answer": "message_2", "subject": "sub_topic"},
        "camel",
        "ProbLLMs",
    ),
    # MCQA and evaluation sets
    **{
        f"arc_{level.lower()}": HubPreset(
            "allenai/ai2_arc",
            "mc",
            {"id": "id", "question": "question", "choices": "choices", "label": "answerKey"},
            "arc",
            "ZEPHYR, ProbLLMs",
            config=f"ARC-{level}",
            converter="arc",
        )
        for level in ("Easy", "Challenge")
    },
    "mmlu": HubPreset(
        "cais/mmlu",
        "mc",
        {"question": "question", "choices": "choices", "label": "answer", "subject": "subject"},
        "mmlu",
        "ZEPHYR, ProbLLMs",
        config="all",
        split="test",
        notes="ZEPHYR trains on the non-test splits (split: auxiliary_train)",
    ),
    "gsm8k": HubPreset(
        "openai/gsm8k",
        "qa",
        {"question": "question", "answer": "answer"},
        "gsm8k",
        "ZEPHYR, ProbLLMs",
        config="main",
        converter="gsm8k",
    ),
    "math": HubPreset(
        "EleutherAI/hendrycks_math",
        "qa",
        {"question": "problem", "answer": "solution", "subject": "type"},
        "math",
        "ProbLLMs",
        config="algebra",
        converter="math",
        reads=("level",),
        notes="configs: algebra, counting_and_probability, geometry, intermediate_algebra, "
        "number_theory, prealgebra, precalculus",
    ),
    "hellaswag": HubPreset(
        "Rowan/hellaswag",
        "mc",
        {"id": "ind", "question": "ctx", "choices": "endings", "label": "label"},
        "hellaswag",
        "ZEPHYR",
        split="validation",
        revision=PARQUET,
        converter="hellaswag",
        reads=("activity_label", "ctx_a", "ctx_b"),
    ),
}


def get_preset(name: str) -> HubPreset:
    """A preset by name, or an error listing the known ones."""
    if name not in PRESETS:
        raise DataError(f"unknown hub preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def load_preset_fixture(name: str) -> list[dict]:
    """The fixture rows of a preset: a few rows shaped exactly like the real dataset
    (same columns, same value types), for tests and offline smoke runs. Presets of
    one dataset (the SHP forums, the Stack Exchange sites, ARC) share one file."""
    preset = get_preset(name)
    text = resources.files("tutorlm.data").joinpath(f"fixtures/{preset.fixture}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
