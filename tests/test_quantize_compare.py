"""``tutorlm quantize compare`` and ``tutorlm quantize``: the table, the plot, the CLI."""

from __future__ import annotations

import json

import pytest

from tutorlm.cli import main
from tutorlm.data.formats import write_records
from tutorlm.recipe import RecipeError, recipe_from_dict

GOLD = [0, 1, 2, 3, 0, 1]


@pytest.fixture
def inputs(tmp_path):
    """Four MCQA questions, three preference pairs, one short text for perplexity."""
    mcqa = tmp_path / "mcqa.jsonl"
    write_records(
        mcqa,
        [
            {
                "id": f"q{i}",
                "source": "test",
                "question": f"What is {i} + 1?",
                "choices": [str(i + 1), str(i + 2), str(i), "none"],
                "answer": GOLD[i],
                "subject": "elementary_mathematics",
            }
            for i in range(4)
        ],
    )
    prefs = tmp_path / "prefs.jsonl"
    write_records(
        prefs,
        [
            {
                "id": f"p{i}",
                "source": "test",
                "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
                "chosen": [{"role": "assistant", "content": f"{i} + {i} = {2 * i}."}],
                "rejected": [{"role": "assistant", "content": f"{i} + {i} = {2 * i + 1}."}],
                "meta": {},
            }
            for i in range(3)
        ],
    )
    text = tmp_path / "notes.md"
    text.write_text("Newton's second law says that force equals mass times acceleration.\n")
    return mcqa, prefs, text


def test_compare_table_has_every_row_and_column(tiny_model_dir, inputs, tmp_path):
    from tutorlm.quantize.compare import run_quantize_compare

    mcqa, prefs, text = inputs
    recipe = recipe_from_dict(
        {
            "name": "q",
            "run_root": str(tmp_path / "runs"),
            "model": str(tiny_model_dir),
            "eval": {
                "perplexity_files": [str(text)],
                "dtype": "float32",
                "bootstrap_resamples": 100,
            },
            "quantize": {
                "methods": ["int8-packed", "int4-packed", "bnb-nf4"],
                "references": ["float32"],
                "tasks": ["perplexity_notes", "mmlu_stem", "mcqa_test", "reward"],
                "new_tokens": 4,
                "repeats": 1,
                "isolate": False,
            },
        }
    )
    out = tmp_path / "cmp"
    # the base model has no reference of its own (evaluate.runner.reward_reference), so
    # the reward column is asked for explicitly: each row against the float model
    rows = run_quantize_compare(
        recipe, str(tiny_model_dir), out, mcqa=mcqa, prefs=prefs, reference=str(tiny_model_dir)
    )
    assert [row["label"] for row in rows] == ["fp32", "int8-packed", "int4-packed"]
    fp32, int8, int4 = rows
    assert int8["weight_bytes"] <= 0.3 * fp32["weight_bytes"]
    for row in rows:
        assert row["tasks"]["mmlu_stem"]["accuracy"]["n"] == 4
        assert row["tasks"]["reward"]["accuracy"]["n"] == 3
        assert row["tasks"]["perplexity_notes"]["value"] > 1
        assert row["generation"]["new_tokens"] == 4 and row["peak_rss_bytes"] is None
    summary = json.loads((out / "compare.json").read_text())
    assert "needs a CUDA GPU" in summary["skipped_rows"]["bnb-nf4"]
    assert "mcqa.test.jsonl is missing" in summary["skipped_tasks"]["mcqa_test"]
    table = (out / "compare.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| row | bits | weights MiB | x fp32 | peak RSS MiB |")
    assert "mmlu_stem accuracy [95 % CI]" in lines[0] and "reward accuracy [95 % CI]" in lines[0]
    assert lines[1] == "|" + " --- |" * len(lines[0].split(" | "))
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| fp32",
        "| int8-packed",
        "| int4-packed",
    ]
    assert f"| {int8['weight_bytes'] / fp32['weight_bytes']:.2f} |" in lines[3]
    assert lines[2].split(" | ")[3] == "1.00"
    assert "Not measured: bnb-nf4" in table and "Column left out: mcqa_test" in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "models" / "int8-packed" / "quantization.json").is_file()


def test_a_row_in_its_own_process_reports_its_peak_rss(tiny_model_dir, tmp_path):
    from tutorlm.quantize.compare import _run_row

    job = {
        "label": "fp32",
        "path": str(tiny_model_dir),
        "quantized": False,
        "dtype": "float32",
        "generation": {"prompt": "Hi", "new_tokens": 2, "repeats": 1},
        "threads": 1,
        "tasks": [],
        "eval": {},
        "out_dir": str(tmp_path / "row"),
    }
    row = _run_row(job, isolate=True)
    assert row["threads"] == 1 and row["weight_bytes"] == 12_879_104
    assert row["peak_rss_bytes"] > row["weight_bytes"]
    assert json.loads((tmp_path / "row" / "result.json").read_text()) == row


def test_a_failed_row_names_its_log(tmp_path):
    from tutorlm.errors import TutorlmError
    from tutorlm.quantize.compare import _run_row

    job = {
        "label": "broken",
        "path": str(tmp_path / "nothing"),
        "quantized": False,
        "out_dir": str(tmp_path / "r"),
    }
    with pytest.raises(
        TutorlmError, match=r"row broken failed \(exit 1\); .*log.txt: .*does not exist"
    ):
        _run_row(job, isolate=True)


def test_recipe_rejects_unknown_methods_and_tasks():
    with pytest.raises(RecipeError, match=r"quantize.methods: .*unknown method\(s\) \['int3'\]"):
        recipe_from_dict({"name": "x", "quantize": {"methods": ["int3"]}})
    with pytest.raises(RecipeError, match=r"unknown task\(s\) \['hellaswag'\]"):
        recipe_from_dict({"name": "x", "quantize": {"tasks": ["hellaswag"]}})
    with pytest.raises(RecipeError, match=r"\['generation:gsm8k'\]: generation tasks are not run"):
        recipe_from_dict({"name": "x", "quantize": {"tasks": ["mcqa:arc", "generation:gsm8k"]}})
    named = ["mcqa:arc", "choice:hellaswag", "reward:epfl_test", "reward", "perplexity_notes"]
    assert recipe_from_dict({"name": "x", "quantize": {"tasks": named}}).quantize.tasks == named
    with pytest.raises(RecipeError, match="did you mean 'quantize.methods'"):
        recipe_from_dict({"name": "x", "quantize": {"method": ["int8-packed"]}})


def test_quantize_command_saves_reloads_and_answers(tiny_model_dir, tmp_path, capsys):
    status = main(
        [
            "quantize",
            "--model",
            str(tiny_model_dir),
            "--method",
            "int8-packed",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert f"-> {tmp_path / 'int8-packed'}" in printed and "(0.26x fp32)" in printed
    assert "reloaded; 'What is 2 + 3?' ->" in printed
    assert (tmp_path / "int8-packed" / "packed.safetensors").is_file()


def test_quantize_command_refuses_gpu_methods_on_cpu(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = main(
        [
            "quantize",
            "--model",
            str(tiny_model_dir),
            "--method",
            "bnb-int8",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert status == 1
    assert "error: method 'bnb-int8' needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _fake_row(job: dict, isolate: bool) -> dict:
    """What ``_run_row`` returns, without loading anything."""
    generation = {
        "tokens_per_second": 10.0,
        "tokens_per_cpu_second": 5.0,
        "ttft_seconds": 0.01,
        "new_tokens": 4,
        "prompt_tokens": 8,
        "runs": [1.0],
    }
    return {
        "label": job["label"],
        "path": job["path"],
        "device": job["device"],
        "load_seconds": 0.1,
        "weight_bytes": 2**20,
        "threads": 1,
        "load_average": 0.0,
        "generation": generation,
        "peak_rss_bytes": None,
        "peak_gpu_bytes": None,
        "tasks": {},
    }


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine where torch sees one CUDA GPU (nothing is ever moved onto it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")


@pytest.mark.parametrize(
    ("device", "measured", "skipped", "reason"),
    [
        ("auto", ["fp32", "int8-weight"], "int8-packed", "runs on torch's CPU kernels only"),
        ("cuda:0", ["fp32", "int8-weight"], "int8-packed", "the device is cuda:0"),
        ("cpu", ["fp32", "int8-packed", "int8-weight"], "bnb-int8", "the device is cpu"),
    ],
)
def test_every_row_runs_on_the_recipe_device_and_others_are_skipped_with_why(
    tiny_model_dir, tmp_path, monkeypatch, gpu_machine, device, measured, skipped, reason
):
    from tutorlm.quantize import compare

    jobs = []
    monkeypatch.setattr(
        compare, "_run_row", lambda job, isolate: jobs.append(job) or _fake_row(job, isolate)
    )
    monkeypatch.setattr(compare, "quantize_to_dir", lambda *args, **kwargs: {})
    text = tmp_path / "notes.md"
    text.write_text("Force equals mass times acceleration.\n")
    recipe = recipe_from_dict(
        {
            "name": "q",
            "run_root": str(tmp_path / "runs"),
            "model": str(tiny_model_dir),
            "device": device,
            "eval": {"perplexity_files": [str(text)]},
            "quantize": {
                "methods": ["int8-packed", "int8-weight", "bnb-int8"],
                "references": ["float32"],
                "tasks": ["perplexity_notes"],
            },
        }
    )
    out = tmp_path / "cmp"
    rows = compare.run_quantize_compare(recipe, str(tiny_model_dir), out, reference="none")
    resolved = "cuda" if device == "auto" else device
    assert [row["label"] for row in rows] == measured
    assert [job["device"] for job in jobs] == [resolved] * len(measured)
    summary = json.loads((out / "compare.json").read_text())
    assert summary["device"] == resolved
    assert reason in summary["skipped_rows"][skipped]
    table = (out / "compare.md").read_text()
    header, _, *lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert header.split(" | ")[11] == "device"
    assert [line.split(" | ")[11] for line in lines] == [resolved] * len(measured)
    assert f"Not measured: {skipped}: " in table


def test_a_cpu_only_method_on_cuda_is_refused_with_the_alternatives(gpu_machine):
    from tutorlm.quantize.methods import QuantizeError, check_available

    with pytest.raises(QuantizeError, match="runs on torch's CPU kernels only.*int8-weight"):
        check_available("int4-packed", "cuda")
    assert check_available("int4-packed", "cpu").bits == 4
    assert check_available("int8-weight", "cuda").backend == "torchao"


def _trained_run(tmp_path, smollm_tokenizer_dir, tiny_model_dir, inputs, **quantize):
    """A run with M0 (the tiny model), M1 and M2 (tiny models of other seeds), an ``arc``
    eval set and test pairs; its eval tasks are the eval-set kinds a report names."""
    import shutil

    from conftest import build_tiny_llama

    mcqa, prefs, _ = inputs
    recipe = recipe_from_dict(
        {
            "name": "q",
            "run_root": str(tmp_path / "runs"),
            "model": str(tiny_model_dir),
            "device": "cpu",
            "train": {"sft_train_file": str(tmp_path / "sft.jsonl"), "dpo_start": "m1"},
            "data": {"prefs": {"sources": [{"type": "jsonl", "name": "p", "path": str(prefs)}]}},
            "eval": {
                "tasks": ["mcqa:arc", "reward", "generation", "mcqa:math_mcqa"],
                "dtype": "float32",
                "bootstrap_resamples": 20,
                "max_questions": 3,
            },
            "quantize": {
                "methods": ["int8-packed"],
                "references": ["float32"],
                "new_tokens": 2,
                "repeats": 1,
                "isolate": False,
                **quantize,
            },
        }
    )
    layout = recipe.layout
    build_tiny_llama(smollm_tokenizer_dir, layout.merged("sft"), seed=1)
    build_tiny_llama(smollm_tokenizer_dir, layout.merged("dpo"), seed=2)
    layout.data_dir.mkdir(parents=True)
    shutil.copy(mcqa, layout.data("arc.jsonl"))
    shutil.copy(prefs, layout.data("prefs.test.jsonl"))
    return recipe


def test_rows_are_scored_on_the_recipe_own_eval_tasks_as_tutorlm_eval_scores_them(
    tmp_path, smollm_tokenizer_dir, tiny_model_dir, inputs
):
    from tutorlm.evaluate.runner import run_eval
    from tutorlm.quantize.compare import run_quantize_compare
    from tutorlm.quantize.config import NO_GENERATION

    recipe = _trained_run(tmp_path, smollm_tokenizer_dir, tiny_model_dir, inputs)
    layout, out = recipe.layout, tmp_path / "cmp"
    # bnb-int8 is skipped on the CPU at once: the fp32 row is the one compared with eval
    rows = run_quantize_compare(recipe, layout.model("M2"), out, methods=["bnb-int8"])
    evaluated = run_eval(recipe, layout.model("M2"), out_dir=tmp_path / "eval")
    summary = json.loads((out / "compare.json").read_text())
    # the default: the recipe's eval tasks less generation (refused, with why) and less
    # the set whose file the data stage has not written (left out, with why)
    assert [task["name"] for task in summary["tasks"]] == ["mcqa:arc", "reward"]
    assert summary["skipped_tasks"]["generation"] == NO_GENERATION
    assert summary["skipped_tasks"]["mcqa:math_mcqa"] == (
        evaluated["skipped"]["mcqa:math_mcqa"].removeprefix("mcqa:math_mcqa: ")
    )
    fp32 = rows[0]
    assert fp32["label"] == "fp32"
    for task in ("mcqa:arc", "reward"):  # the same figure, interval and count as tutorlm eval
        assert fp32["tasks"][task]["accuracy"] == evaluated["tasks"][task]["accuracy"]
    assert fp32["tasks"]["mcqa:arc"]["accuracy"]["n"] == 3  # eval.max_questions
    # the reward of M2 is measured against the model it was trained from: M1
    assert summary["reference"] == layout.model("M1")
    assert [row["reference"] for row in rows] == [layout.model("M1")]
    header = next(line for line in (out / "compare.md").read_text().splitlines() if "| row" in line)
    assert "| mcqa:arc accuracy [95 % CI] | change (points) |" in header
    assert "| reward accuracy [95 % CI] | change (points) |" in header


def test_baselines_join_unquantized_and_a_missing_one_is_not_measured_with_why(
    tmp_path, smollm_tokenizer_dir, tiny_model_dir, inputs, monkeypatch
):
    from conftest import build_tiny_llama

    from tutorlm.quantize import compare

    small = build_tiny_llama(smollm_tokenizer_dir, tmp_path / "small", seed=3)
    missing = str(tmp_path / "runs" / "q-small" / "dpo" / "merged")
    recipe = _trained_run(
        tmp_path, smollm_tokenizer_dir, tiny_model_dir, inputs,
        baseline_model=missing, baseline_models=[str(small)], tasks=["mcqa:arc", "reward"],
    )  # fmt: skip
    assert recipe.quantize.baselines() == [missing, str(small)]
    jobs = []
    monkeypatch.setattr(
        compare, "_run_row", lambda job, isolate: jobs.append(job) or _fake_row(job, isolate)
    )
    monkeypatch.setattr(compare, "quantize_to_dir", lambda *args, **kwargs: {})
    out = tmp_path / "cmp"
    rows = compare.run_quantize_compare(recipe, recipe.layout.model("M2"), out)
    assert [row["label"] for row in rows] == ["fp32", "int8-packed", "baseline-2"]
    baseline = rows[-1]
    assert (baseline["kind"], baseline["model"], baseline["bits"]) == ("baseline", str(small), 32)
    # a model from outside the run: its reward against the recipe's base model (the rule
    # of evaluate.runner.reward_reference), on the same tasks as the other rows
    assert [job["reference"] for job in jobs] == [recipe.layout.model("M1")] * 2 + [
        str(tiny_model_dir)
    ]
    assert [t["name"] for t in jobs[-1]["tasks"]] == ["mcqa:arc", "reward"]
    assert jobs[-1]["device"] == jobs[0]["device"] == "cpu"
    summary = json.loads((out / "compare.json").read_text())
    assert summary["skipped_rows"] == {
        f"baseline {missing}": f"{missing} does not exist yet: train that model first "
        "(its run or sweep variant)"
    }
    table = (out / "compare.md").read_text()
    assert f"| baseline: {small} |" in table
    assert f"- Not measured: baseline {missing}: {missing} does not exist yet" in table


def test_quantized_rows_answer_the_tutor_tasks_with_verdicts_per_item(tiny_model_dir, tmp_path):
    """The tutor tasks in a row: one generation pass, an entry per metric, and each
    row's per-item verdicts on disk for the paired int8-vs-float comparison."""
    from tutorlm.quantize.compare import run_quantize_compare

    recipe = recipe_from_dict(
        {
            "name": "qt",
            "run_root": str(tmp_path / "runs"),
            "model": str(tiny_model_dir),
            "eval": {"dtype": "float32", "tutor_limit": 1, "tutor_max_new_tokens": 3},
            "quantize": {
                "methods": ["int8-packed"],
                "references": ["float32"],
                "tasks": ["tutor:grounded", "tutor:hint_leakage"],
                "new_tokens": 2,
                "repeats": 1,
                "isolate": False,
            },
        }
    )
    out = tmp_path / "cmp"
    rows = run_quantize_compare(recipe, str(tiny_model_dir), out)
    assert [row["label"] for row in rows] == ["fp32", "int8-packed"]
    for row in rows:
        assert set(row["tasks"]) == {"tutor:grounded", "tutor:hint_leakage"}
        assert row["tasks"]["tutor:grounded"]["n"] == 1
        verdicts = out / "rows" / row["label"] / "predictions.tutor-grounded.jsonl"
        assert len(verdicts.read_text().splitlines()) == 1
    assert "- Tutor tasks (held-out tutoring items" in (out / "compare.md").read_text()
