"""The MCQA ablation with and without retrieval, on a tiny random model and hand-made vectors."""

from __future__ import annotations

import json

import pytest
from rag_support import KeywordEmbedder  # tests/ is on sys.path

from tutorlm.data.formats import MCQARecord
from tutorlm.evaluate.ablation import (
    index_sources,
    notes_mcqa_records,
    run_rag_ablation,
    with_notes,
)

NOTES = {
    "physics.md": "# Physics\n\n## Energy\n\nEnergy alpha is conserved in a closed system alpha.\n\n"
    "## Waves\n\nWaves beta carry energy beta without carrying matter.\n",
    "biology.md": "# Biology\n\n## Cells\n\nCells gamma are the units of life gamma.\n",
}
QUESTIONS = [
    ("What is conserved alpha?", ["Energy", "Mass"], 0, "physics.md", "Energy"),
    ("What do waves beta carry?", ["Matter", "Energy"], 1, "physics.md", "Waves"),
    ("What are cells gamma?", ["Units of life", "Rocks"], 0, "biology.md", "Cells"),
]


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    from tutorlm.evaluate.scorer import Scorer

    return Scorer.from_spec(tiny_model_dir, dtype="float32")


@pytest.fixture
def notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    return folder


def records():
    return [
        MCQARecord(
            id=f"q{i}",
            source="test",
            question=question,
            choices=choices,
            answer=answer,
            subject=file[:-3],
            meta={"file": file, "section": section},
        )
        for i, (question, choices, answer, file, section) in enumerate(QUESTIONS)
    ]


def test_ablation_scores_every_condition_on_the_same_questions(scorer, notes, tmp_path):
    from tutorlm.evaluate.mcqa import evaluate_mcqa

    out = tmp_path / "ablation"
    table = run_rag_ablation(
        None,
        records(),
        [notes],
        ks=(1, 2),
        chunk_sizes=(16, 32),
        out_dir=out,
        scorer=scorer,
        embedder=KeywordEmbedder(),
        resamples=50,
        log=lambda line: None,
    )
    assert [row.condition for row in table.rows] == [
        "no retrieval",
        "k=1, 16-token chunks",
        "k=2, 16-token chunks",
        "k=1, 32-token chunks",
        "k=2, 32-token chunks",
    ]
    base = table.rows[0]
    assert base.accuracy.value == evaluate_mcqa(scorer, records()).accuracy.value
    for row in table.rows[1:]:
        # every prompt holds its source section (hand-made vectors point straight at it)
        assert row.gold_retrieved == 1.0
        assert row.context_tokens > 0
        assert row.gain.value == pytest.approx(row.accuracy.value - base.accuracy.value)

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert len(predictions) == 3 * len(table.rows)
    first = {p["id"]: p["sources"] for p in predictions if p["condition"] == "k=1, 16-token chunks"}
    assert first == {
        "q0": ["notes/physics.md#0"],
        "q1": ["notes/physics.md#1"],
        "q2": ["notes/biology.md#0"],
    }
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "ablation.md").read_text()
    assert "| k=2, 32-token chunks |" in markdown and "gain vs none" in markdown
    assert json.loads((out / "ablation.json").read_text())["n"] == 3
    sources, embedder = index_sources(out / "index-16tok")
    assert sources == [str((notes / n).resolve()) for n in sorted(NOTES)]
    assert embedder == "test:keywords"  # the embedder the ablation built it with


def test_with_notes_puts_the_notes_before_the_question():
    record = records()[0]
    assert with_notes(record, "Course notes:\n[1] (x)\ntext").question == (
        "Course notes:\n[1] (x)\ntext\n\nWhat is conserved alpha?"
    )
    assert with_notes(record, "") is record


def test_bundled_notes_questions_load_as_mcqa_records_with_their_section():
    loaded = notes_mcqa_records()
    assert len(loaded) == 180
    assert all(r.meta["file"].endswith(".md") and r.meta["section"] for r in loaded)
    assert {r.subject for r in loaded} == {
        "biology",
        "chemistry",
        "computer_science",
        "machine_learning",
        "mathematics",
        "physics",
    }


def test_table_shows_length_normalised_accuracy_when_scored_by_choice():
    from tutorlm.evaluate.ablation import AblationRow, AblationTable
    from tutorlm.evaluate.stats import Interval

    table = AblationTable("m", 4, "hybrid", "choice")
    table.rows = [
        AblationRow(
            "no retrieval",
            None,
            None,
            Interval(0.25, 0.0, 0.75, 4),
            None,
            None,
            0.0,
            1.0,
            Interval(0.5, 0.0, 1.0, 4),
        ),  # fmt: skip
        AblationRow(
            "k=1, 64-token chunks",
            64,
            1,
            Interval(0.75, 0.25, 1.0, 4),
            Interval(0.5, 0.0, 1.0, 4),
            1.0,
            80.4,
            1.0,
            Interval(0.75, 0.5, 1.0, 4),
            Interval(0.25, -0.25, 0.5, 4),
        ),  # fmt: skip
    ]
    assert table.markdown() == (
        "| condition | accuracy | gain vs none | acc_norm | gain vs none (acc_norm) "
        "| gold section in prompt | notes tokens |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        "| no retrieval | 0.250 [0.000, 0.750] | – | 0.500 [0.000, 1.000] | – | – | 0 |\n"
        "| k=1, 64-token chunks | 0.750 [0.250, 1.000] | +0.500 [+0.000, +1.000] "
        "| 0.750 [0.500, 1.000] | +0.250 [-0.250, +0.500] | 1.00 | 80 |\n"
    )


def test_a_recipe_decides_the_ablation_for_run_and_eval_rag_alike(tmp_path, monkeypatch):
    from tutorlm.data.formats import write_records
    from tutorlm.evaluate import ablation
    from tutorlm.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "r",
            "run_root": str(tmp_path),
            "seed": 7,
            "eval": {"chat": True, "max_questions": 2, "bootstrap_resamples": 10},
            "rag": {"ablation_ks": [2], "ablation_chunk_tokens": [32], "mode": "bm25"},
        }
    )
    rows = [r.model_dump() for r in records()]
    for row, source in zip(rows, ["notes", "mmlu", "notes-physics"], strict=True):
        row["source"] = source
    write_records(tmp_path / "r" / "data" / "mcqa.test.jsonl", rows + rows[:1])
    questions = ablation.recipe_notes_questions(recipe)
    assert [q.id for q in questions] == ["q0", "q2"]  # notes only, eval.max_questions of them

    calls = []
    monkeypatch.setattr(ablation, "run_rag_ablation", lambda *a, **kw: calls.append((a, kw)))
    ablation.run_recipe_ablation(recipe, "m", questions, tmp_path / "out", scorer="S", log=print)
    (args, kwargs) = calls[0]
    assert args == ("m", questions, ["bundled:notes"])
    assert kwargs == {
        "ks": [2],
        "chunk_sizes": [32],
        "out_dir": tmp_path / "out",
        "mode": "bm25",
        "budget_tokens": 768,
        "embedding_model": "bundled:all-minilm-l6-v2",
        "method": "choice",
        "chat": True,
        "seed": 7,
        "resamples": 10,
        "scorer": "S",
        "log": print,
    }
