"""Write a run's report twice: ``report.md`` beside its PNGs, and a self-contained
``report.html`` with the same content and every plot embedded as a data URI, so the
HTML file alone can be mailed or attached to an issue."""

from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tutorlm.data.formats import atomic_write_text
from tutorlm.layout import RunLayout

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #1d1d1f; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f7; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
code, pre { background: #f5f5f7; border-radius: 4px; }
pre { padding: .8em; overflow-x: auto; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.note { color: #8a4b00; }
"""


@dataclass
class Figure:
    """A PNG with a caption."""

    path: Path
    caption: str


@dataclass
class Section:
    """One heading of the report: Markdown text, then its figures."""

    title: str
    markdown: str
    figures: list[Figure] = field(default_factory=list)


def _figure_markdown(figure: Figure, asset_dir: str) -> str:
    return f"![{figure.caption}]({asset_dir}/{figure.path.name})\n\n*{figure.caption}*\n"


def render_markdown(title: str, sections: list[Section], asset_dir: str = "report_files") -> str:
    """The report as Markdown, figures referenced from ``asset_dir``."""
    parts = [f"# {title}\n"]
    for section in sections:
        parts.append(f"## {section.title}\n\n{section.markdown.strip()}\n")
        parts.extend(_figure_markdown(figure, asset_dir) for figure in section.figures)
    return "\n".join(parts)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(title: str, sections: list[Section]) -> str:
    """The report as one HTML page with every figure embedded."""
    import markdown

    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body.append(markdown.markdown(section.markdown, extensions=["tables", "fenced_code"]))
        for figure in section.figures:
            caption = html.escape(figure.caption)
            body.append(
                f'<figure><img src="{_data_uri(figure.path)}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_report(out_dir: Path, title: str, sections: list[Section]) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``report_files/``) and a self-contained ``report.html``
    into ``out_dir`` (a run directory: the names are its layout's)."""
    layout = RunLayout(Path(out_dir))
    assets = layout.report_files
    assets.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for figure in section.figures:
            if figure.path.parent.resolve() != assets.resolve():
                shutil.copyfile(figure.path, assets / figure.path.name)
    md_path, html_path = layout.report_md, layout.report_html
    atomic_write_text(md_path, render_markdown(title, sections))
    atomic_write_text(html_path, render_html(title, sections))
    return md_path, html_path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats shown with 3 significant decimals, None as a dash."""

    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
