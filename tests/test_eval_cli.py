"""``tutorlm eval``: a recipe's tasks and missing data, ``eval files``, ``eval compare``."""

from __future__ import annotations

import json

import pytest
import yaml

from tutorlm.cli import main
from tutorlm.data.formats import write_records

GOLD = [0, 1, 2, 3, 0, 0]


def mcqa_rows(n=6):
    return [
        {
            "id": f"m{i}",
            "source": "test",
            "question": f"What is {i} + 1?",
            "choices": [str(i + 1), str(i + 2), str(i), "none"],
            "answer": GOLD[i % len(GOLD)],
            "subject": "elementary_mathematics",
        }
        for i in range(n)
    ]


@pytest.fixture
def mcqa_file(tmp_path):
    path = tmp_path / "mcqa.jsonl"
    write_records(path, mcqa_rows())
    return path


def test_mcqa_file_writes_results_and_predictions(tiny_model_dir, mcqa_file, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "eval",
            "files",
            "--model",
            str(tiny_model_dir),
            "--mcqa",
            str(mcqa_file),
            "--out",
            str(out),
            "--dtype",
            "float32",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "mcqa" in printed and "accuracy" in printed and "questions/s" in printed
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"m{i}" for i in range(6)]
    assert all(
        len(row["logprobs"]) == 4
        and row["predicted"] == max(range(4), key=row["logprobs"].__getitem__)
        for row in rows
    )
    results = json.loads((out / "results.json").read_text())
    accuracy = results["tasks"]["mcqa"]["accuracy"]
    assert accuracy["value"] == sum(row["correct"] for row in rows) / 6
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    assert results["dtype"] == "float32"
    assert "| mcqa | acc |" in (out / "results.md").read_text()


def test_bad_mcqa_row_is_named_by_file_line_and_field(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    rows = mcqa_rows(2)
    rows[1]["answer"] = 9
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    status = main(
        [
            *("eval", "files", "--model", str(tiny_model_dir)),
            *("--mcqa", str(path), "--out", str(tmp_path / "o")),
        ]
    )
    assert status == 1
    assert "bad.jsonl:2: field 'answer'" in capsys.readouterr().err


def test_recipe_run_skips_missing_data_with_the_command_that_builds_it(
    tiny_model_dir, tmp_path, capsys
):
    notes = tmp_path / "notes.md"
    notes.write_text("# Forces\nA force changes the motion of a body. " * 20)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "run_root": str(tmp_path / "runs"),
                "eval": {"perplexity_files": [str(notes)], "bootstrap_resamples": 50},
            }
        )
    )
    status = main(["eval", str(recipe), "--model", str(tiny_model_dir)])
    captured = capsys.readouterr()
    assert status == 1
    missing = tmp_path / "runs" / "t" / "data" / "mmlu_stem.jsonl"
    assert f"{missing} is missing; build it with `tutorlm data build {recipe}`" in captured.out
    assert "perplexity" in captured.out and "token-level, window 1024, stride 512" in captured.out
    results = json.loads(
        (tmp_path / "runs" / "t" / "eval" / tiny_model_dir.name / "results.json").read_text()
    )
    assert set(results["skipped"]) == {"mmlu_stem", "mcqa_test"}
    assert results["tasks"]["perplexity_notes"]["kind"] == "perplexity"

    data = tmp_path / "runs" / "t" / "data"
    write_records(data / "mmlu_stem.jsonl", mcqa_rows(6))
    write_records(data / "mcqa.test.jsonl", mcqa_rows(4))
    from tutorlm.evaluate.runner import run_eval

    results = run_eval(
        str(recipe), str(tiny_model_dir), tasks=["mmlu_stem", "mcqa_test"], out_dir=tmp_path / "e"
    )
    assert results["skipped"] == {}
    assert results["tasks"]["mmlu_stem"]["n"] == 6 and results["tasks"]["mcqa_test"]["n"] == 4
    assert (tmp_path / "e" / "predictions.mmlu_stem.jsonl").is_file()


def test_compare_puts_models_in_rows_and_metrics_in_columns(tmp_path, capsys):
    def results(name, value):
        interval = {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 10}
        return {
            "model_name": name,
            "tasks": {
                "mmlu_stem": {"kind": "mcqa", "accuracy": interval, "accuracy_norm": None},
                "perplexity_notes": {"kind": "perplexity", "value": 12.5},
            },
        }

    for name, value in [("m0", 0.25), ("m1", 0.5)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results(name, value)))
    status = main(["eval", "compare", str(tmp_path / "m0"), str(tmp_path / "m1" / "results.json")])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | mmlu_stem acc | perplexity_notes ppl |"
    assert lines[2] == "| m0 | 0.250 [0.150, 0.350] | 12.500 |"
    assert lines[3] == "| m1 | 0.500 [0.400, 0.600] | 12.500 |"


def test_eval_without_anything_to_do_says_what_is_missing(tmp_path, capsys):
    args = ["eval", "files", "--model", "bundled:smollm2-135m-instruct", "--out", str(tmp_path)]
    assert main(args) == 1
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main([*args, "--prefs", str(tmp_path / "p.jsonl")]) == 1
    assert "--prefs needs --ref" in capsys.readouterr().err
    assert main([*args, "--mcqa", str(tmp_path / "m.jsonl"), "--shots", "-1"]) == 1
    assert "bad eval settings: shots: Input should be greater than or equal to 0" in (
        capsys.readouterr().err
    )


def test_model_labels_keep_m1_and_m2_apart(tmp_path):
    from tutorlm.evaluate.runner import model_label

    for stage in ("sft", "dpo"):
        (tmp_path / stage / "merged").mkdir(parents=True)
    assert model_label("bundled:smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert model_label("Qwen/Qwen1.5-0.5B-Chat") == "Qwen--Qwen1.5-0.5B-Chat"
    assert model_label(tmp_path / "sft" / "merged") == "sft-merged"
    assert model_label(tmp_path / "dpo" / "merged") == "dpo-merged"
    assert model_label(tmp_path / "sft") == "sft"
