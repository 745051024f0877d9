"""The report: Markdown with its PNGs, and a self-contained HTML page that renders them."""

from __future__ import annotations

import json

import pytest

from tutorlm.report.document import Figure, Section, markdown_table, write_report
from tutorlm.report.plots import plot_training_curves, read_metrics


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
