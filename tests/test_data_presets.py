"""Every hub preset, fed its fixture rows (shaped exactly like the real dataset)."""

from __future__ import annotations

import time

import pytest

from tutorlm.data.config import HubSource
from tutorlm.data.examples import DataError, SourceStats
from tutorlm.data.rules.records import RecordBuilder
from tutorlm.data.rules.text import last_boxed
from tutorlm.data.sources.hub import HubReader
from tutorlm.data.sources.hub_presets import (
    CONVERTERS,
    PARQUET,
    PRESETS,
    estimated_votes,
    load_preset_fixture,
)

KIND = {"qa": "sft", "messages": "sft", "pair": "preference", "mc": "mcqa", "ranked": "preference"}

# fixture -> (examples kept, drops, which example to probe, {its field: exact value})
EXPECTED = {
    "metamathqa": (3, {}, 0, {"final": "18", "meta": {"type": "GSM_Rephrased"}}),
    "open_platypus": (
        3,
        {},
        0,
        {"question": "A 2 kg ball moves at 3 m/s. What is its kinetic energy?"},
    ),
    "codealpaca": (3, {}, 1, {"question": "Reverse the given list.\n\n[1, 2, 3]"}),
    "mathinstruct": (3, {}, 0, {"subject": "data/CoT/gsm_rft.json"}),
    "lima": (
        3,
        {},
        0,
        {
            "messages": [
                {"role": "user", "content": "Why is the sky blue?"},
                {
                    "role": "assistant",
                    "content": "Sunlight is scattered by air molecules, and shorter (blue) wavelengths scatter much more than longer (red) ones, so blue light reaches our eyes from every direction of the sky.",
                },
            ]
        },
    ),
    "glaive_code_assistant": (
        3,
        {},
        1,
        {"question": "What does the `yield` keyword do in Python?"},
    ),
    "goat": (
        3,
        {},
        0,
        {"question": "What is 4821 + 377?", "answer": "4821 + 377 = 5198", "final": "5198"},
    ),
    "arxiv_math_instruct": (3, {}, 0, {"question": "What is a compact operator?"}),
    "cosmopedia": (
        3,
        {},
        2,
        {
            "answer": "Newton's second law states that the net force on a body equals its mass times its acceleration, F = ma."
        },
    ),
    "magicoder": (
        3,
        {},
        1,
        {"question": "Implement a Rust function that adds two i32 values and returns the result."},
    ),
    "wiki_qa": (
        2,
        {"not_an_answer": 1},
        0,
        {
            "group": "hub:microsoft/wiki_qa/None/None/train:Q1",
            "question": "how do plants make food",
        },
    ),
    "orca_dpo_pairs": (
        3,
        {},
        0,
        {
            "system": "You are an AI assistant. Provide a detailed answer.",
            "rejected": "The seasons happen because Earth is closer to the Sun in summer.",
        },
    ),
    "truthy_dpo": (
        3,
        {},
        0,
        {
            "uid": "04c275bf738fd391b7fe25e25fe7bed3",
            "question": "Do we only use ten percent of our brains?",
        },
    ),
    "shp": (
        3,
        {},
        1,
        {
            "uid": "k2b8xq",
            "rejected": "They pick a number.",
            "meta": {"score_chosen": 31, "score_rejected": 4, "domain": "askengineers_train"},
        },
    ),
    "py_dpo": (
        3,
        {},
        2,
        {
            "question": "Count the vowels in a string.",
            "rejected": "def vowels(s):\n    return len(s)",
        },
    ),
    "h4rmony": (
        3,
        {},
        1,
        {
            "chosen": "Take them to a battery collection point so the metals are recovered and do not leak into soil."
        },
    ),
    "code_vulnerability_dpo": (3, {}, 0, {"rejected": "```python\nprint(eval(input()))\n```"}),
    "stackexchange": (
        3,
        {},
        1,
        {
            "uid": "202",
            "question": "How do I compute $\\int_0^1 x^2\\,dx$?",
            "answers": [
                ("Use the power rule: $\\int_0^1 x^2 dx = \\left[ x^3/3 \\right]_0^1 = 1/3$.", 5.0),
                ("It is the area under the parabola, about a third.", 2.0),
            ],
        },
    ),
    "camel": (3, {}, 2, {"question": "Solve 5x - 4 = 21.", "subject": "Solving linear equations"}),
    "arc": (
        3,
        {},
        1,
        {
            "uid": "NYSEDREGENTS_2015_4_8",
            "label": 0,
            "choices": ["balance", "ruler", "thermometer", "graduated cylinder"],
        },
    ),
    "mmlu": (3, {}, 1, {"label": 2, "subject": "high_school_physics"}),
    "gsm8k": (
        3,
        {},
        1,
        {
            "final": "25",
            "answer": "The shop has 3*15 = 45 books.\nAfter selling, 45-20 = 25 books are left.\nThe answer is 25.",
        },
    ),
    "math": (3, {}, 1, {"final": "\\frac{7}{8}", "subject": "Prealgebra"}),
    "hellaswag": (
        2,
        {"unlabeled": 1},
        1,
        {
            "question": "Home and Garden: How to clean a cast iron pan. Rinse the pan with hot "
            "water. Scrub away stuck-on food with a stiff brush. Do not",
            "label": 0,
        },
    ),
}


def reader_for(name: str, **extra) -> HubReader:
    preset = PRESETS[name]
    config = HubSource(type="hub", name=f"src_{name}", preset=name, fixture=True, **extra)
    return HubReader(config, KIND[preset.shape], 0, "test")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_maps_its_fixture_rows(name):
    preset = PRESETS[name]
    kept, drops, index, fields = EXPECTED[preset.fixture]
    if preset.converter == "se_votes":  # pm_score 5 accepted -> 15 votes; 2 -> 3 votes
        texts = [text for text, _ in fields["answers"]]
        fields = {**fields, "answers": list(zip(texts, [15.0, 3.0], strict=True))}
    reader = reader_for(name)
    reader.check()  # every mapped and converter column exists in the fixture rows
    stats = SourceStats("test", "hub")
    examples = list(reader.examples(stats))
    assert (len(examples), dict(stats.dropped), stats.read) == (kept, drops, 3)
    for field, value in fields.items():
        assert getattr(examples[index], field) == value, field


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_becomes_records_of_its_natural_kind(name):
    preset = PRESETS[name]
    extra = {"pairing": "epfllama"} if preset.shape == "ranked" else {}
    reader = reader_for(name, **extra)
    stats = SourceStats("test", "hub")
    examples = list(reader.examples(stats))
    builder = RecordBuilder(
        reader.config, reader.kind, seed=0, section="test", system_prompt=None, model="unused"
    )
    rows = builder.build(examples, stats)
    if preset.shape == "ranked":  # best vs worst, both >= 2: question 303 is a 3-3 tie
        assert [row.record.chosen[0].content[:19] for row in rows] == [
            "It is an experiment",
            "Use the power rule:",
        ]
        assert [row.record.rejected[0].content for row in rows] == [
            "Because light has no mass.",
            "It is the area under the parabola, about a third.",
        ]
        assert dict(stats.dropped) == {"tied_scores": 1}
    else:
        assert len(rows) == len(examples)
    for row in rows:
        assert row.record.source == f"src_{name}"


def test_stack_exchange_html_becomes_text_with_code_and_latex():
    examples = list(reader_for("stackexchange_physics").examples(SourceStats("t", "hub")))
    best = examples[0].answers[0][0]
    assert "Michelson–Morley" in best and "$x' = \\gamma (x - vt)$" in best
    assert best.endswith("```\nc' = c\n```")


@pytest.mark.parametrize(
    ("pm_score", "accepted", "votes"),
    [
        (4, False, 15.0),
        (3, False, 7.0),
        (2, False, 3.0),
        (5, True, 15.0),
        (0, True, 0.0),
        (-1, False, -1.0),
        (0, False, 0.0),
    ],
)
def test_stack_exchange_votes_are_estimated_from_the_log_score(pm_score, accepted, votes):
    assert estimated_votes(pm_score, accepted) == votes


def test_probllms_vote_thresholds_read_in_votes_keep_the_reports_pairs():
    """ProbLLMs' rule (chosen >= 10, rejected 3-5) read on pm_score keeps one pair whose
    rejected answer has ~15 votes; read in estimated votes it keeps both questions
    whose chosen answer has >= 10 votes, each against its ~3-vote answer."""

    def pairs(name):
        reader = reader_for(name, pairing="probllms")
        stats = SourceStats("test", "hub")
        builder = RecordBuilder(
            reader.config, reader.kind, seed=0, section="t", system_prompt=None, model="unused"
        )
        rows = builder.build(list(reader.examples(stats)), stats)
        kept = [(row.record.meta["scores"], row.record.rejected[0].content[:14]) for row in rows]
        return kept, dict(stats.dropped)

    assert pairs("stackexchange_physics") == (
        [([11.0, 4.0], "Maxwell's equa")],
        {"chosen_min_score": 2},
    )
    assert pairs("stackexchange_physics_votes") == (
        [([1023.0, 3.0], "Because light "), ([15.0, 3.0], "It is the area")],
        {"chosen_min_score": 1},
    )


def test_preset_fixture_rows_have_the_real_columns():
    assert set(load_preset_fixture("gsm8k")[0]) == {"question", "answer"}
    assert set(load_preset_fixture("shp_askphysics")[0]) == {
        "post_id",
        "domain",
        "upvote_ratio",
        "history",
        "c_root_id_A",
        "c_root_id_B",
        "created_at_utc_A",
        "created_at_utc_B",
        "score_A",
        "score_B",
        "human_ref_A",
        "human_ref_B",
        "labels",
        "seconds_difference",
        "score_ratio",
    }
    assert set(load_preset_fixture("arc_easy")[0]["choices"]) == {"text", "label"}
    assert set(load_preset_fixture("camel_physics")[0]) == {
        "role_1",
        "topic;",
        "sub_topic",
        "message_1",
        "message_2",
    }


def test_unknown_preset_lists_the_known_ones():
    config = HubSource(type="hub", name="x", preset="gsm9k")
    with pytest.raises(DataError, match="unknown hub preset 'gsm9k'; known: .*gsm8k"):
        HubReader(config, "sft", 0, "s")


def test_hub_fails_fast_and_clearly_when_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("TUTORLM_ONLINE", raising=False)
    reader = HubReader(HubSource(type="hub", name="g", preset="gsm8k"), "sft", 0, "s")
    start = time.monotonic()
    with pytest.raises(
        DataError, match=r"source 'g': cannot load hub dataset 'openai/gsm8k'.*TUTORLM_ONLINE=1"
    ):
        reader.check()
    assert time.monotonic() - start < 30


def test_hub_rows_through_load_dataset_and_a_missing_column(monkeypatch):
    import datasets

    calls = []

    def fake_load(dataset_id, config=None, *, split, data_dir=None, revision=None):
        calls.append((dataset_id, config, split, data_dir))
        return datasets.Dataset.from_list(load_preset_fixture("gsm8k"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    reader = HubReader(HubSource(type="hub", name="g", preset="gsm8k"), "sft", 0, "s")
    reader.check()
    examples = list(reader.examples(SourceStats("s", "hub")))
    assert calls == [("openai/gsm8k", "main", "train", None)]
    assert [e.final for e in examples] == ["72", "25", "3600"]
    bad = HubSource(
        type="hub",
        name="g2",
        dataset="x/y",
        shape="qa",
        columns={"question": "question", "answer": "solution"},
    )
    with pytest.raises(DataError, match="source 'g2': column 'solution' is not in the data"):
        HubReader(bad, "sft", 0, "s").check()


def test_hellaswag_is_preprocessed_as_lm_eval_does():
    """ActivityNet rows get ``ctx_b`` capitalised; WikiHow rows lose their markers,
    ``[title]`` becoming a sentence break, in the context and in every ending."""
    activitynet, wikihow = list(reader_for("hellaswag").examples(SourceStats("t", "hub")))
    assert activitynet.question == "Roof shingle removal: A man is sitting on a roof. He"
    assert activitynet.choices[3] == "starts pulling up roofing on a roof."
    assert wikihow.choices == [
        "soak the pan in the sink, as standing water makes it rust. Dry it at once with a towel.",
        "paint the pan blue before you cook with it.",
        "put the pan in the freezer for a week. Serve it cold.",
        "throw the pan out of the window.",
    ]
    assert not any("[" in text for text in [wikihow.question, *wikihow.choices])


def test_math_answers_in_every_box_form_the_reference_accepts():
    assert last_boxed(r"so $\boxed{\frac{7}{8}}$.") == r"\frac{7}{8}"
    assert last_boxed(r"the answer is $\boxed 5$.") == "5"
    assert last_boxed(r"the answer is \boxed 12") == "12"
    assert last_boxed(r"hence \fbox{x^{2}}") == "x^{2}"
    assert last_boxed(r"\boxed{1}, then \fbox{2}, then $\boxed 3$") == "3"
    assert last_boxed(r"no box, or \boxed{unclosed") is None
    solution = {"problem": "?", "solution": r"So it is $\boxed 7$.", "level": "1", "type": "x"}
    assert CONVERTERS["math"](solution, {})["final"] == "7"


def test_presets_of_script_datasets_read_the_parquet_conversion(monkeypatch):
    import datasets

    calls = []

    def fake_load(dataset_id, config=None, *, split, data_dir=None, revision=None):
        calls.append((dataset_id, split, revision))
        return datasets.Dataset.from_list(load_preset_fixture(dataset_id.split("/")[1].lower()))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    for name in ("hellaswag", "lima"):
        HubReader(HubSource(type="hub", name=name, preset=name), "mcqa", 0, "s").check()
    own = HubSource(type="hub", name="h", preset="hellaswag", revision="abc123")
    HubReader(own, "mcqa", 0, "s").check()
    assert calls == [
        ("Rowan/hellaswag", "validation", "refs/convert/parquet"),
        ("GAIR/lima", "train", "refs/convert/parquet"),
        ("Rowan/hellaswag", "validation", "abc123"),
    ]
    assert [PRESETS[n].revision for n in ("gsm8k", "hellaswag")] == [None, PARQUET]


def test_a_loading_script_refusal_says_what_to_do(monkeypatch):
    """datasets >= 4 refuses a repository with a loading script whatever the network:
    the hint names ``revision``, not the id, config or network."""
    import datasets

    def refuse(dataset_id, config=None, *, split, data_dir=None, revision=None):
        raise RuntimeError("Dataset scripts are no longer supported, but found hellaswag.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setenv("TUTORLM_ONLINE", "1")
    config = HubSource(type="hub", name="h", preset="hellaswag", revision="main")
    with pytest.raises(DataError) as error:
        HubReader(config, "mcqa", 0, "s").check()
    message = str(error.value)
    assert message.startswith(
        "source 'h': cannot load hub dataset 'Rowan/hellaswag' (config None, split "
        "'validation', revision 'main'): RuntimeError: Dataset scripts are no longer supported"
    )
    assert "set revision: refs/convert/parquet" in message
    assert "network" not in message
