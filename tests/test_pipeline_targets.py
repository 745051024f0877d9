"""The report's targets: each claim checked against the files a run's stages wrote."""

from __future__ import annotations

import json

from tutorlm.pipeline.targets import check_targets, targets_markdown
from tutorlm.pipeline.tutor_report import tutor_section
from tutorlm.recipe import recipe_from_dict

TUTOR = (
    "tutor:citation_correctness",
    "tutor:hint_leakage",
    "tutor:explanation",
    "tutor:grounded",
    "tutor:abstention",
)


def interval(value, low, high, n=100):
    return {"value": value, "low": low, "high": high, "n": n}


def tutor(value, low, high, better="higher", count=8, n=16):
    return {
        "kind": "tutor",
        "rate": interval(value, low, high, n),
        "count": count,
        "n": n,
        "better": better,
    }


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_run(tmp_path, *, m2_mcqa, reward, m2_tutor, letters, int8_flips, gain):
    """A run's files: M0 and M2 results, a quantize comparison with per-item outputs of
    the fp32 and int8 rows (``int8_flips`` of 20 MCQA items answered otherwise by int8),
    and the retrieval ablation."""
    recipe = recipe_from_dict({"name": "r", "run_root": str(tmp_path)})
    run = recipe.run_dir
    mcqa = {"accuracy": interval(0.26, 0.21, 0.31)}
    m0_tasks = {"mcqa_test": mcqa, "mmlu_stem": {"accuracy": interval(0.25, 0.19, 0.31)}}
    m0_tasks |= {name: tutor(0.1, 0.0, 0.25) for name in TUTOR}
    m0_tasks["tutor:letter_collapse"] = tutor(0.2, 0.05, 0.4, better="lower")
    write(run / "eval" / "m0" / "results.json", {"tasks": m0_tasks})
    m2_tasks = {
        "mcqa_test": {"accuracy": interval(*m2_mcqa)},
        "mmlu_stem": {"accuracy": interval(0.26, 0.20, 0.32)},
        "reward": {"accuracy": interval(*reward, n=68)},
    }
    m2_tasks |= {name: tutor(*m2_tutor) for name in TUTOR}
    m2_tasks["tutor:letter_collapse"] = tutor(*letters, better="lower")
    write(run / "eval" / "m2" / "results.json", {"tasks": m2_tasks})
    rows = [
        {"label": "fp32", "kind": "reference", "bits": 32, "tasks": {"tutor:grounded": {}}},
        {"label": "int8-packed", "kind": "quantized", "bits": 8, "tasks": {}},
    ]
    write(run / "quantize" / "compare.json", {"rows": rows})
    rows_dir = run / "quantize" / "rows"
    answers = [{"id": f"q{i}", "predicted": 1, "correct": i % 2 == 0} for i in range(20)]
    flipped = [
        {**row, "predicted": 2, "correct": not row["correct"]} if i < int8_flips else row
        for i, row in enumerate(answers)
    ]
    write_jsonl(rows_dir / "fp32" / "predictions.mcqa_test.jsonl", answers)
    write_jsonl(rows_dir / "int8-packed" / "predictions.mcqa_test.jsonl", flipped)
    verdicts = [{"id": f"g{i}", "verdict": i < 5} for i in range(10)]
    for label in ("fp32", "int8-packed"):
        write_jsonl(rows_dir / label / "predictions.tutor-grounded.jsonl", verdicts)
    ablation = {
        "n": 53,
        "method": "choice",
        "rows": [
            {"condition": "no retrieval", "gain": None},
            {"condition": "k=1, 64-token chunks", "gain": interval(*gain)},
        ],
    }
    write(run / "rag" / "ablation.json", ablation)
    return recipe


def test_every_target_met_is_reported_met(tmp_path):
    recipe = make_run(
        tmp_path,
        m2_mcqa=(0.30, 0.25, 0.36),
        reward=(0.80, 0.70, 0.90),
        m2_tutor=(0.6, 0.4, 0.8),
        letters=(0.1, 0.0, 0.25),
        int8_flips=0,
        gain=(0.20, 0.08, 0.32),
    )
    checks = check_targets(recipe, {"data": {"seconds": 60.0}, "sft": {"seconds": 120.0}})
    assert [c.met for c in checks] == [True, True, True, True, True, True, True]
    assert "citation_correctness: 0.100 [0.000, 0.250] -> 0.600 [0.400, 0.800] (beats)" in (
        checks[0].measured
    )
    assert checks[1].measured == "M0 0.200 [0.050, 0.400] -> M2 0.100 [0.000, 0.250]"
    assert checks[2].measured.startswith("mmlu_stem: M0 0.250 [0.190, 0.310] -> M2 0.260")
    assert checks[4].measured == (
        "int8-packed vs fp32: mcqa_test: +0.000 [+0.000, +0.000], agree 100% of 20; "
        "grounded: +0.000 [+0.000, +0.000], agree 100% of 10"
    )
    assert checks[5].measured.startswith("best k=1, 64-token chunks: +0.200 [+0.080, +0.320]")
    assert checks[6].measured == "3.0 minutes of stages"


def test_missed_targets_say_so_and_why(tmp_path):
    recipe = make_run(
        tmp_path,
        m2_mcqa=(0.15, 0.11, 0.20),  # below M0's interval: a regression
        reward=(0.70, 0.60, 0.80),
        m2_tutor=(0.2, 0.05, 0.35),  # overlaps M0's
        letters=(0.5, 0.3, 0.7),
        int8_flips=4,  # 80 % agreement
        gain=(0.02, -0.03, 0.08),
    )
    checks = check_targets(recipe, {"sft": {"seconds": 1300.0}})
    assert [c.met for c in checks] == [False] * 7
    assert "agree 80% of 20" in checks[4].measured
    text = targets_markdown(checks)
    assert text.count("**not met**") == 7
    assert "no regression on MCQA" in text and "tutor tasks carry the claim" in text


def test_targets_without_outputs_are_not_measured(tmp_path):
    recipe = recipe_from_dict({"name": "empty", "run_root": str(tmp_path)})
    checks = check_targets(recipe, {})
    assert [c.met for c in checks] == [None, None, None, None, None, None, True]
    lines = targets_markdown(checks).splitlines()
    assert sum(line.endswith("| not measured |") for line in lines) == 6


def test_the_tutor_section_lays_models_side_by_side_and_audits_replies(tmp_path):
    recipe = make_run(
        tmp_path,
        m2_mcqa=(0.30, 0.25, 0.36),
        reward=(0.80, 0.70, 0.90),
        m2_tutor=(0.6, 0.4, 0.8),
        letters=(0.1, 0.0, 0.25),
        int8_flips=0,
        gain=(0.20, 0.08, 0.32),
    )
    prompt = [{"role": "user", "content": "Course notes:\n[1] ...\n\nQuestion: What is F?"}]
    write_jsonl(
        recipe.layout.eval_dir("M2") / "predictions.tutor-grounded.jsonl",
        [
            {"id": "a", "prompt": prompt, "reply": "F = ma [1].", "verdict": True, "why": "ok"},
            {"id": "b", "prompt": prompt, "reply": "No idea.", "verdict": False, "why": "no"},
        ],
    )
    section = tutor_section(recipe)
    lines = section.markdown.splitlines()
    header = next(line for line in lines if line.startswith("| task |"))
    assert header == "| task | M0 | M2 |  |"
    assert "| grounded | 0.100 [0.000, 0.250] (8/16) | 0.600 [0.400, 0.800] (8/16) |" in (
        section.markdown
    )
    assert "| grounded | pass | What is F? | F = ma [1]. | ok |" in section.markdown
    assert "| grounded | fail | What is F? | No idea. | no |" in section.markdown
