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
        "embedder": None,
        "index_root": None,
        "log": print,
    }


def _two_model_run(tmp_path, tiny_model_dir, smollm_tokenizer_dir, notes, *, train_m2=True, **rag):
    """A run whose M0 is the tiny model and whose M2 is another tiny model (seed 1), with
    notes questions in ``mcqa.test.jsonl`` and an ``arc`` eval set of the same questions."""
    from conftest import build_tiny_llama

    from tutorlm.data.formats import write_records
    from tutorlm.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "r",
            "run_root": str(tmp_path / "runs"),
            "model": str(tiny_model_dir),
            "eval": {"dtype": "float32", "bootstrap_resamples": 10},
            "rag": {
                "sources": [str(notes)],
                "ablation_ks": [1],
                "ablation_chunk_tokens": [32],
                "mode": "dense",
                **rag,
            },
        }
    )
    layout = recipe.layout
    if train_m2:
        build_tiny_llama(smollm_tokenizer_dir, layout.merged("dpo"), seed=1)
    rows = [r.model_dump() | {"source": "notes"} for r in records()]
    write_records(layout.data("mcqa.test.jsonl"), rows)
    write_records(layout.data("arc.jsonl"), [row | {"source": "arc"} for row in rows[:2]])
    return recipe


def test_ablation_on_two_models_writes_one_block_per_model_and_set(
    tmp_path, tiny_model_dir, smollm_tokenizer_dir, notes
):
    from tutorlm.evaluate.ablations import run_recipe_ablations
    from tutorlm.evaluate.mcqa import evaluate_mcqa
    from tutorlm.evaluate.scorer import Scorer

    recipe = _two_model_run(
        tmp_path,
        tiny_model_dir,
        smollm_tokenizer_dir,
        notes,
        ablation_models=["M2", "M0"],
        ablation_questions=["notes", "mcqa:arc", "mcqa:gsm8k_mcqa"],
    )
    out = tmp_path / "rag"
    result = run_recipe_ablations(recipe, out, embedder=KeywordEmbedder(), log=lambda line: None)
    m2 = recipe.layout.model("M2")
    assert [(b.label, b.questions, b.model, b.n) for b in result.blocks] == [
        ("M2", "notes", m2, 3),
        ("M2", "mcqa:arc", m2, 2),
        ("M0", "notes", str(tiny_model_dir), 3),
        ("M0", "mcqa:arc", str(tiny_model_dir), 2),
    ]
    assert list(result.skipped) == ["mcqa:gsm8k_mcqa"]
    assert "gsm8k_mcqa.jsonl is missing" in result.skipped["mcqa:gsm8k_mcqa"]
    # each block's "no retrieval" row is the plain MCQA score of its own model
    for block in result.blocks:
        scorer = Scorer.from_spec(block.model, dtype="float32")
        asked = records() if block.questions == "notes" else records()[:2]
        plain = evaluate_mcqa(scorer, asked, method="choice", resamples=10)
        assert block.rows[0].accuracy.value == plain.accuracy.value
        assert [row.condition for row in block.rows] == ["no retrieval", "k=1, 32-token chunks"]
    summary = json.loads((out / "ablation.json").read_text())
    assert [(b["label"], b["questions"]) for b in summary["blocks"]] == [
        ("M2", "notes"), ("M2", "mcqa:arc"), ("M0", "notes"), ("M0", "mcqa:arc"),
    ]  # fmt: skip
    assert summary["label"] == "M2" and summary["n"] == 3  # the first block at the top
    markdown = (out / "ablation.md").read_text()
    assert markdown.startswith("MCQA with and without retrieval, one block per model")
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings == ["## M2, notes", "## M2, mcqa:arc", "## M0, notes", "## M0, mcqa:arc"]
    assert "- Not measured: mcqa:gsm8k_mcqa: " in markdown
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "m0-mcqa_arc" / "ablation.json").read_text())["label"] == "M0"
    assert sorted(p.name for p in out.glob("index-*")) == ["index-32tok"]  # built once


def test_ablation_default_is_the_final_model_on_the_notes_questions(
    tmp_path, tiny_model_dir, smollm_tokenizer_dir, notes
):
    from tutorlm.evaluate.ablations import run_recipe_ablations

    recipe = _two_model_run(tmp_path, tiny_model_dir, smollm_tokenizer_dir, notes)
    out = tmp_path / "rag"
    result = run_recipe_ablations(recipe, out, embedder=KeywordEmbedder(), log=lambda line: None)
    assert [(b.label, b.questions) for b in result.blocks] == [("M2", "notes")]
    # one block: its files straight in the folder, as the ablation has always written
    assert json.loads((out / "ablation.json").read_text())["rows"][0]["condition"] == "no retrieval"
    assert (
        (out / "ablation.md")
        .read_text()
        .startswith(
            f"MCQA with and without retrieval: M2 (`{recipe.layout.model('M2')}`), 3 questions from notes"
        )
    )


def test_an_untrained_model_is_skipped_and_a_non_mcqa_set_is_refused(
    tmp_path, tiny_model_dir, smollm_tokenizer_dir, notes
):
    from tutorlm.evaluate.ablation import AblationError
    from tutorlm.evaluate.ablations import run_recipe_ablations

    recipe = _two_model_run(
        tmp_path, tiny_model_dir, smollm_tokenizer_dir, notes, train_m2=False,
        ablation_models=["M0", "M2"],
    )  # fmt: skip
    result = run_recipe_ablations(
        recipe, tmp_path / "rag", embedder=KeywordEmbedder(), log=lambda line: None
    )
    assert [b.label for b in result.blocks] == ["M0"]
    assert result.skipped == {
        "M2": f"{recipe.layout.model('M2')} is not trained yet (tutorlm run RECIPE trains it)"
    }
    wrong = recipe.model_copy(
        update={"rag": recipe.rag.model_copy(update={"ablation_questions": ["reward"]})}
    )
    with pytest.raises(AblationError, match="'reward' is a reward task; the ablation asks MCQA"):
        run_recipe_ablations(wrong, tmp_path / "rag2", log=lambda line: None)


def test_the_quiz_the_rag_stage_builds_is_a_question_set_of_the_ablation(tmp_path):
    from tutorlm.data.formats import MCQARecord, write_records
    from tutorlm.evaluate.ablations import ablation_question_sets
    from tutorlm.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {"name": "q", "run_root": str(tmp_path), "rag": {"ablation_questions": ["quiz"]}}
    )
    sets, skipped = ablation_question_sets(recipe)
    assert sets == {} and skipped == {
        "quiz": f"{recipe.layout.rag_dir / 'quiz.jsonl'} is not built (the rag stage builds it)"
    }
    quiz = [
        MCQARecord(
            id="quiz-1", source="quiz", question="Unit of force?", choices=["N", "J"], answer=0
        )
    ]
    write_records(recipe.layout.rag_dir / "quiz.jsonl", quiz)
    sets, skipped = ablation_question_sets(recipe)
    assert [record.id for record in sets["quiz"]] == ["quiz-1"] and skipped == {}
