"""`tutorlm run` end to end on the demo recipe, shrunk (tiny model, few rows, two steps).

This is the CI version of `make demo`: every stage runs for real, in order, the
report is written with every section, a second run does no work, and the report
renders in a browser with its plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tutorlm.cli import main
from tutorlm.contract import CONTRACTS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = list(CONTRACTS)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, smollm_tokenizer_dir):
    root = tmp_path_factory.mktemp("pipeline")
    status = main(["run", str(REPO_ROOT / "recipes" / "demo.yaml"), f"run_root={root}", "--smoke"])
    assert status == 0
    return root / "demo-smoke"


def test_every_stage_ran_and_recorded_its_outputs(smoke_run):
    state = json.loads((smoke_run / "pipeline.json").read_text())["stages"]
    ran = [name for name, info in state.items() if info["status"] == "done"]
    assert [name for name in STAGES if name in ran] == STAGES
    for name in STAGES:
        assert all(Path(output).exists() for output in state[name]["outputs"]), name


def test_report_has_every_section_filled(smoke_run):
    text = (smoke_run / "report.md").read_text()
    for heading in [
        "## Run",
        "## Data",
        "## Training",
        "## Evaluation: M0, M1, M2",
        "## Quantization",
        "## Retrieval ablation",
        "## Sample answers: M0 and M2 side by side",
        "## Talk to the tutor",
    ]:
        assert heading in text
    assert "Not available" not in text
    assert "| M0 |" in text and "| M2 |" in text
    assert "tutorlm chat --model" in text
    served = json.loads((smoke_run / "served.json").read_text())  # what serve --recipe takes
    assert f"tutorlm chat --model {served['model']}" in text


def test_second_run_skips_every_stage(smoke_run, capsys):
    root = smoke_run.parent
    assert (
        main(["run", str(REPO_ROOT / "recipes" / "demo.yaml"), f"run_root={root}", "--smoke"]) == 0
    )
    out = capsys.readouterr().out
    for name in STAGES:
        assert f"{name} " in out
    assert out.count("skipped  unchanged since last run") == len(STAGES)


@pytest.mark.browser
def test_report_renders_with_its_plots(smoke_run, chromium_browser):
    page = chromium_browser.new_page()
    page.goto((smoke_run / "report.html").as_uri())
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(widths) >= 3 and all(w > 100 for w in widths)
    assert "Evaluation: M0, M1, M2" in page.inner_text("body")
    page.close()
