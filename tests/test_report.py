"""The report: Markdown with its PNGs, and a self-contained HTML page that renders them."""

from __future__ import annotations

import json

import pytest

from tutorlm.report.document import Figure, Section, markdown_table, write_report
from tutorlm.report.plots import plot_training_curves, read_metrics, training_panels


@pytest.fixture
def metrics(tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "".join(
            json.dumps({"step": s, "loss": 2.0 - 0.1 * s, "learning_rate": 1e-4}) + "\n"
            for s in range(1, 6)
        )
    )
    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "loss": 0.69 - 0.05 * s,
                    "rewards/accuracies": 0.5 + 0.1 * s,
                    "rewards/margins": 0.1 * s,
                }
            )
            + "\n"
            for s in range(1, 4)
        )
    )
    return read_metrics(sft), read_metrics(dpo)


def test_markdown_table_formats_cells():
    table = markdown_table(["model", "acc", "n"], [["M0", 0.25, 1200], ["M|2", None, 3]])
    assert table.splitlines() == [
        "| model | acc | n |",
        "|---|---|---|",
        "| M0 | 0.250 | 1,200 |",
        "| M\\|2 | – | 3 |",
    ]


def test_training_curves_plot_has_one_panel_per_available_series(tmp_path, metrics):
    png = plot_training_curves(*metrics, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training_curves([], [], tmp_path / "none.png") is None


def test_report_files_are_written_with_embedded_images(tmp_path, metrics):
    png = plot_training_curves(*metrics, tmp_path / "curves.png")
    sections = [
        Section("Results", "Some **text**.\n\n" + markdown_table(["a"], [[1]])),
        Section("Training", "Curves below.", [Figure(png, "Training curves")]),
    ]
    md, html = write_report(tmp_path / "run", "Run report", sections)
    text = md.read_text()
    assert "## Training" in text and "![Training curves](report_files/curves.png)" in text
    assert (tmp_path / "run" / "report_files" / "curves.png").is_file()
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 1
    assert "<table>" in page and "<strong>text</strong>" in page


@pytest.mark.browser
def test_report_renders_in_chromium_with_its_images(tmp_path, metrics, chromium_browser):
    png = plot_training_curves(*metrics, tmp_path / "curves.png")
    _, html = write_report(
        tmp_path / "run", "Run report", [Section("Training", "x", [Figure(png, "Curves")])]
    )
    page = chromium_browser.new_page()
    page.goto(html.as_uri())
    assert page.title() == "Run report"
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(widths) == 1 and widths[0] > 100
    assert page.inner_text("h2") == "Training"
    page.close()


def test_data_section_names_optional_sources_that_were_missing(tmp_path):
    import json

    from tutorlm.pipeline.report import _data
    from tutorlm.recipe import recipe_from_dict

    recipe = recipe_from_dict({"name": "r", "run_root": str(tmp_path)})
    manifest = {
        "sources": {"sft_a": {"section": "sft", "read": 5, "kept": 4, "dropped": {"empty": 1}}},
        "outputs": {
            "sft.train.jsonl": {"kind": "sft", "rows": 4, "eval": False, "sha256": "ab" * 32}
        },
        "eval_sets": ["mcqa.test.jsonl"],
        "missing": {"epfl_pairs": "private/epfl.jsonl"},
    }
    (tmp_path / "r" / "data").mkdir(parents=True)
    (tmp_path / "r" / "data" / "manifest.json").write_text(json.dumps(manifest))
    text = _data(recipe).markdown
    assert "| sft | sft_a | 5 | 4 | empty 1 |" in text
    assert "not in this run**: `epfl_pairs` (private/epfl.jsonl)." in text


def test_validation_rows_become_curves_next_to_the_training_ones(metrics):
    sft, dpo = metrics
    sft_evals = [
        {"step": s, "split": "eval", "eval_loss": v} for s, v in ((0, 2.5), (2, 2.0), (4, 1.5))
    ]
    dpo_evals = [
        {"step": s, "split": "eval", "eval_loss": 0.7, "eval_rewards/accuracies": a}
        for s, a in ((0, 0.0), (3, 0.75))
    ]
    panels = {p.title: p.lines for p in training_panels(sft + sft_evals, dpo + dpo_evals)}
    assert panels["SFT loss"]["validation"] == ([0, 2, 4], [2.5, 2.0, 1.5])
    assert panels["SFT loss"]["train"][0] == [1, 2, 3, 4, 5]
    assert panels["DPO reward accuracy"]["validation"] == ([0, 3], [0.0, 0.75])
    assert set(panels["DPO reward margin"]) == {"train"}  # no eval margins logged
    assert set(panels["SFT learning rate"]) == {"train"}


def test_training_section_reports_validation_loss_and_reward_accuracy(tmp_path):
    from tutorlm.pipeline.report import _training
    from tutorlm.recipe import recipe_from_dict

    recipe = recipe_from_dict({"name": "r", "run_root": str(tmp_path)})
    rows = {
        "sft": [
            {"step": 0, "eval_loss": 2.5},
            {"step": 1, "loss": 2.0},
            {"step": 1, "eval_loss": 1.5},
        ],
        "dpo": [{"step": 1, "loss": 0.6, "rewards/accuracies": 0.5, "rewards/margins": 0.1}],
    }
    for stage, lines in rows.items():
        path = recipe.layout.metrics(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = _training(recipe).markdown
    assert "| SFT | 1 | 2.000 | 2.000 | – | – | 2.500 | 1.500 | – |" in text
    assert "| DPO | 1 | 0.600 | 0.600 | 0.500 | 0.100 | – | – | – |" in text
