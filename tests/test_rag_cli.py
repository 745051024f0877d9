"""``tutorlm index build``, ``index search`` and ``ask --rag`` from the command line."""

from __future__ import annotations

import json

import pytest

from tutorlm.cli import main


def test_build_reports_missing_sources_and_empty_folders(tmp_path, capsys):
    assert main(["index", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "i")]) == 1
    assert "nope: no such file or folder to index" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.md").write_text("")
    assert main(["index", "build", str(tmp_path / "empty"), "--out", str(tmp_path / "i")]) == 1
    assert "nothing to index" in capsys.readouterr().err and not (tmp_path / "i").exists()


def test_build_rejects_bad_chunk_settings(tmp_path, capsys):
    args = ["index", "build", str(tmp_path), "--out", str(tmp_path / "i")]
    assert main([*args, "--chunk-tokens", "64", "--chunk-overlap", "64"]) == 1
    assert "chunk_overlap (64) must be smaller than chunk_tokens (64)" in capsys.readouterr().err


def test_search_and_ask_need_an_index(tmp_path, capsys):
    assert main(["index", "search", str(tmp_path), "entropy"]) == 1
    assert "not a RAG index (no manifest.json)" in capsys.readouterr().err
    assert main(["ask", "why?", "--rag", str(tmp_path), "--k", "0"]) == 1
    assert "bad rag settings: k: Input should be greater than or equal to 1" in (
        capsys.readouterr().err
    )


@pytest.fixture(scope="module")
def notes_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("rag") / "notes-index"
    assert main(["index", "build", "bundled:notes", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_bundled_notes_index_with_minilm_finds_the_right_section(notes_index, capsys):
    capsys.readouterr()
    assert main(["index", "build", "bundled:notes", "--out", str(notes_index)]) == 0
    assert "(6 unchanged, 0 chunks embedded, 0 skipped)" in capsys.readouterr().out

    for mode in ("dense", "bm25", "hybrid"):
        query = "What is the plant cell wall made of?"
        assert main(["index", "search", str(notes_index), query, "--mode", mode, "--k", "1"]) == 0
        assert "notes/biology.md, Biology > Cells" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.slow
def test_ask_answers_with_the_passages_it_was_given(notes_index, tiny_model_dir, capsys):
    capsys.readouterr()
    question = "What is Newton's second law?"
    args = ["ask", question, "--rag", str(notes_index), "--model", str(tiny_model_dir)]
    assert main([*args, "--max-new-tokens", "8", "--k", "2", "--show-prompt"]) == 0
    out = capsys.readouterr().out
    assert "--- user\nCourse notes:\n[1] (notes/physics.md, Physics > Newton's laws)" in out
    assert f"Question: {question}" in out
    # a random tiny model cites nothing, so every note given is listed
    assert "The answer cites none of the notes; the notes it was given:" in out
    assert "\n[1] notes/physics.md, Physics > Newton's laws\n" in out and "\n[2] notes/" in out


@pytest.mark.slow
def test_eval_rag_ablates_the_sources_of_an_index(notes_index, tiny_model_dir, tmp_path, capsys):
    from tutorlm.data.formats import write_records
    from tutorlm.evaluate.ablation import notes_mcqa_records

    questions = tmp_path / "notes-mcqa.jsonl"
    write_records(questions, [r.model_dump() for r in notes_mcqa_records()[:4]])
    out = tmp_path / "ablation"
    args = ["eval", "rag", "--model", str(tiny_model_dir), "--index", str(notes_index)]
    capsys.readouterr()
    assert main([*args, "--mcqa", str(questions), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    conditions = ["no retrieval"] + [
        f"k={k}, {size}-token chunks" for size in (64, 200) for k in (1, 3, 5)
    ]
    for condition in conditions:
        assert f"| {condition} |" in printed
    table = json.loads((out / "ablation.json").read_text())
    assert table["n"] == 4 and table["method"] == "choice"
    assert [row["condition"] for row in table["rows"]] == conditions
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4 * len(conditions)


def test_eval_rag_needs_questions_and_scores_mcqa_only(tmp_path, capsys):
    from tutorlm.rag.store import FORMAT, MANIFEST

    index = tmp_path / "index"
    index.mkdir()
    manifest = {  # an index of no files, as a build of an empty folder would write it
        "format": FORMAT,
        "files": {},
        "segments": [],
        "segment_rows": {},
        "skipped": [],
        "n_chunks": 0,
        "serial": 0,
        "embedder": {"name": "bundled:all-minilm-l6-v2"},
        "settings": {},
    }
    (index / MANIFEST).write_text(json.dumps(manifest))
    args = ["eval", "rag", "--model", "m", "--rag", str(index)]
    assert main(args) == 1
    assert "eval rag needs MCQA questions" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the ablation scores MCQA only
        main([*args, "--prefs", str(tmp_path / "p.jsonl")])
    assert main(["eval", "rag", "--model", "m", "--index", str(tmp_path), "--mcqa", "x"]) == 1
    assert "not a RAG index" in capsys.readouterr().err
