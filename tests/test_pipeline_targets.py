"""The report's targets: each claim checked against the files a run's stages wrote."""

from __future__ import annotations

import json

from tutorlm.pipeline.targets import check_targets, targets_markdown
from tutorlm.recipe import recipe_from_dict


def interval(value, low, high, n=100):
    return {"value": value, "low": low, "high": high, "n": n}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_run(tmp_path, *, m2_mcqa, reward, int8_accuracy, gain):
    recipe = recipe_from_dict({"name": "r", "run_root": str(tmp_path)})
    run = recipe.run_dir
    mcqa = {"accuracy": interval(0.26, 0.21, 0.31), "predicted_counts": {"A": 285}}
    write(run / "eval" / "m0" / "results.json", {"tasks": {"mcqa_test": mcqa}})
    m2 = {"accuracy": interval(*m2_mcqa), "predicted_counts": {"A": 100, "C": 185}}
    write(
        run / "eval" / "m2" / "results.json",
        {"tasks": {"mcqa_test": m2, "reward": {"accuracy": interval(*reward, n=68)}}},
    )
    rows = [
        {"label": "fp32", "kind": "reference", "bits": 32, "tasks": {"mcqa_test": mcqa}},
        {
            "label": "int8-packed",
            "kind": "quantized",
            "bits": 8,
            "tasks": {"mcqa_test": {"accuracy": interval(int8_accuracy, 0.2, 0.3)}},
        },
    ]
    write(run / "quantize" / "compare.json", {"rows": rows})
    ablation = {
        "n": 53,
        "method": "choice",
        "rows": [
            {"condition": "no retrieval", "gain": None},
            {"condition": "k=1, 64-token chunks", "gain": interval(*gain)},
            {"condition": "k=3, 64-token chunks", "gain": interval(0.01, -0.05, 0.07)},
        ],
    }
    write(run / "rag" / "ablation.json", ablation)
    return recipe


def test_every_target_met_is_reported_met(tmp_path):
    recipe = make_run(
        tmp_path,
        m2_mcqa=(0.40, 0.34, 0.46),
        reward=(0.80, 0.70, 0.90),
        int8_accuracy=0.255,
        gain=(0.20, 0.08, 0.32),
    )
    checks = check_targets(recipe, {"data": {"seconds": 60.0}, "sft": {"seconds": 120.0}})
    assert [c.met for c in checks] == [True, True, True, True, True]
    assert checks[0].measured == "M0 0.260 [0.210, 0.310] -> M2 0.400 [0.340, 0.460]"
    assert checks[2].measured == "fp32 0.260, int8-packed 0.255 (-0.5 points)"
    assert checks[3].measured.startswith("best k=1, 64-token chunks: +0.200 [+0.080, +0.320]")
    assert checks[4].measured == "3.0 minutes of stages"


def test_missed_targets_say_so_and_why(tmp_path):
    recipe = make_run(
        tmp_path,
        m2_mcqa=(0.28, 0.23, 0.33),
        reward=(0.70, 0.60, 0.80),
        int8_accuracy=0.28,
        gain=(0.02, -0.03, 0.08),
    )
    checks = check_targets(recipe, {"sft": {"seconds": 1300.0}})
    assert [c.met for c in checks] == [False, False, False, False, False]
    assert "{'A': 100, 'C': 185}" in checks[0].note
    text = targets_markdown(checks)
    assert text.count("**not met**") == 5
    assert "| int8 M2 within 1 point of M2 on `mcqa_test` |" in text


def test_targets_without_outputs_are_not_measured(tmp_path):
    recipe = recipe_from_dict({"name": "empty", "run_root": str(tmp_path)})
    checks = check_targets(recipe, {})
    assert [c.met for c in checks] == [None, None, None, None, True]
    lines = targets_markdown(checks).splitlines()
    assert sum(line.endswith("| not measured |") for line in lines) == 4
