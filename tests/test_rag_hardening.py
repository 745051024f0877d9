"""An index build deletes only what builds wrote, reads only files inside its sources,
and a damaged index is a one-line error naming the file (issue 17)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rag_support import KeywordEmbedder, write_docs

from tutorlm.cli import main
from tutorlm.rag import build_index, load_index
from tutorlm.rag.config import IndexSettings
from tutorlm.rag.store import RagIndexError, load_live

SETTINGS = IndexSettings(chunk_tokens=16, chunk_overlap=2)
DOCS = {"a.txt": "alpha beta", "b.txt": "gamma delta", "c.txt": "alpha delta"}
FOREIGN = [".seg-hidden", "dense-2024.csv", "dense-report.pdf", "seg-important.txt", "seg-photos"]


@pytest.fixture
def docs(tmp_path):
    return write_docs(tmp_path, DOCS)


def _put_foreign_files(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for name in FOREIGN[:4]:
        (folder / name).write_text("mine\n")
    (folder / "seg-photos").mkdir()
    (folder / "seg-photos" / "cat.jpg").write_bytes(b"\xff\xd8")


def _rows(index_dir: Path) -> list:
    live = load_live(index_dir)
    return [(c.id, c.text, v.tolist()) for c, v in zip(live.chunks, live.vectors, strict=True)]


def test_a_folder_that_is_not_an_index_is_refused_before_anything_is_read(docs, tmp_path):
    out = tmp_path / "mine"
    _put_foreign_files(out)
    embedder = KeywordEmbedder()
    with pytest.raises(RagIndexError) as caught:
        build_index([docs], out, settings=SETTINGS, embedder=embedder)
    assert str(caught.value) == (
        f"{out}: not an index folder (it holds .seg-hidden, dense-2024.csv, dense-report.pdf "
        "and 2 more); tutorlm index build writes into a new or empty folder, or one it built"
    )
    assert embedder.embedded == []
    assert sorted(p.name for p in out.iterdir()) == FOREIGN
    assert (out / "seg-photos" / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_an_index_folder_keeps_the_files_no_build_wrote(docs, tmp_path):
    out = tmp_path / "index"
    build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    _put_foreign_files(out)
    (docs / "a.txt").write_text("alpha alpha\n")
    build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    bigger = IndexSettings(chunk_tokens=32, chunk_overlap=2)  # a full rebuild
    report = build_index([docs], out, settings=bigger, embedder=KeywordEmbedder())
    assert report.full_rebuild == "settings or embedding model changed"
    assert sorted(p.name for p in out.iterdir()) == sorted([*FOREIGN, "manifest.json", "seg-0003"])
    assert (out / "seg-photos" / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_out_naming_a_file_fails_before_any_embedding(docs, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    embedder = KeywordEmbedder()
    with pytest.raises(RagIndexError, match="notes.txt: exists and is not a folder"):
        build_index([docs], target, settings=SETTINGS, embedder=embedder)
    assert embedder.embedded == [] and target.read_text() == "keep me\n"
    assert main(["index", "build", str(docs), "--out", str(target)]) == 1
    assert capsys.readouterr().err == (
        f"error: {target}: exists and is not a folder; --out names an index folder\n"
    )


KILLED_BUILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from rag_support import KeywordEmbedder
from tutorlm.rag import build_index, store
from tutorlm.rag.config import IndexSettings

def die(*args):  # the segment is complete, the manifest not yet replaced
    os.kill(os.getpid(), signal.SIGKILL)

store.write_manifest = die
import tutorlm.rag.index
tutorlm.rag.index.write_manifest = die
settings = IndexSettings(chunk_tokens=16, chunk_overlap=2)
build_index([{docs!r}], {out!r}, settings=settings, embedder=KeywordEmbedder())
"""


def test_a_killed_build_leaves_the_old_index_and_a_rerun_equals_a_fresh_build(docs, tmp_path):
    out = tmp_path / "index"
    build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    before = _rows(out)
    (docs / "b.txt").write_text("gamma gamma\n")
    script = KILLED_BUILD.format(tests=str(Path(__file__).parent), docs=str(docs), out=str(out))
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False)
    assert killed.returncode == -9
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "seg-0001", "seg-0002"]
    assert _rows(out) == before

    build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "seg-0001", "seg-0003"]
    build_index([docs], tmp_path / "fresh", settings=SETTINGS, embedder=KeywordEmbedder())
    assert sorted(_rows(out)) == sorted(_rows(tmp_path / "fresh"))


def test_a_first_build_killed_before_its_manifest_is_rebuilt_over(docs, tmp_path):
    build_index([docs], tmp_path / "done", settings=SETTINGS, embedder=KeywordEmbedder())
    out = tmp_path / "index"
    out.mkdir()
    shutil.copytree(tmp_path / "done" / "seg-0001", out / ".seg-0001.tmp")
    shutil.copytree(tmp_path / "done" / "seg-0001", out / "seg-0001")
    build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "seg-0002"]
    assert _rows(out) == _rows(tmp_path / "done")


def test_links_out_of_the_sources_dangling_links_and_fifos_are_skipped(tmp_path):
    docs, other = tmp_path / "docs", tmp_path / "other"
    docs.mkdir(), other.mkdir()
    (docs / "a.txt").write_text("alpha\n")
    (other / "b.txt").write_text("beta\n")
    (tmp_path / "secret.txt").write_text("gamma\n")
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    (docs / "secret.txt").symlink_to(tmp_path / "secret.txt")
    (docs / "same.txt").symlink_to(docs / "a.txt")
    (docs / "b.txt").symlink_to(other / "b.txt")  # inside another source given
    (docs / "gone.md").symlink_to(tmp_path / "missing.md")
    (docs / "outside").symlink_to(tmp_path)
    os.mkfifo(docs / "pipe.md")
    report = build_index([docs, other], tmp_path / "index", settings=SETTINGS,
                         embedder=KeywordEmbedder())  # fmt: skip
    assert report.skipped == [
        ("docs/gone.md", "dangling symbolic link"),
        ("docs/outside", "symbolic link leading outside the sources"),
        ("docs/passwd.txt", "symbolic link leading outside the sources"),
        ("docs/pipe.md", "not a regular file (FIFO)"),
        ("docs/secret.txt", "symbolic link leading outside the sources"),
    ]
    assert report.added == ["docs/a.txt", "docs/b.txt", "docs/same.txt", "other/b.txt"]
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert [s["source"] for s in manifest["skipped"]] == [s for s, _ in report.skipped]


def test_files_over_the_size_cap_are_skipped_and_the_cap_reindexes_only_them(docs, tmp_path):
    (docs / "big.txt").write_text("delta " * 25)  # 150 bytes
    out = tmp_path / "index"
    capped = IndexSettings(chunk_tokens=16, chunk_overlap=2, max_file_bytes=100)
    report = build_index([docs], out, settings=capped, embedder=KeywordEmbedder())
    assert report.skipped == [
        (
            "docs/big.txt",
            "larger than the size cap (150 bytes > 100 bytes); "
            "raise max_file_bytes (--max-file-bytes) to index it",
        )
    ]
    embedder = KeywordEmbedder()
    report = build_index([docs], out, settings=SETTINGS, embedder=embedder)
    assert report.full_rebuild is None and report.added == ["docs/big.txt"]
    assert {text.split()[0] for text in embedder.embedded} == {"delta"}  # big.txt's chunks
    assert IndexSettings().max_file_bytes == 10_000_000


def test_the_build_shows_a_progress_bar_over_files(docs, tmp_path, monkeypatch):
    import tqdm

    bars = []

    def recording_tqdm(iterable, **options):
        bars.append((list(iterable), options["unit"]))
        return iterable

    monkeypatch.setattr(tqdm, "tqdm", recording_tqdm)
    build_index([docs], tmp_path / "index", settings=SETTINGS, embedder=KeywordEmbedder(),
                progress=True)  # fmt: skip
    assert [([f.source for f in files], unit) for files, unit in bars] == [
        (["docs/a.txt", "docs/b.txt", "docs/c.txt"], "file")
    ]


@pytest.fixture
def built(docs, tmp_path):
    out = tmp_path / "index"
    build_index([docs], out, settings=SETTINGS, embedder=KeywordEmbedder())
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: (out / "manifest.json").write_text('{"format": '), "manifest.json: unreadable"),
        (lambda out: (out / "manifest.json").write_bytes(b"\xff\xfe\x00"), "manifest.json: unreadable"),
        (lambda out: _truncate(out / "seg-0001" / "dense.faiss"), "seg-0001/dense.faiss: damaged"),
        (lambda out: _truncate(out / "seg-0001" / "bm25.npz"), "seg-0001/bm25.npz: damaged"),
        (lambda out: _truncate(out / "seg-0001" / "chunks.jsonl"), "seg-0001/chunks.jsonl: damaged"),
    ],
    ids=["manifest-json", "manifest-bytes", "faiss", "bm25", "chunks"],
)  # fmt: skip
def test_a_damaged_index_is_a_one_line_error_naming_the_file(built, damage, message, capsys):
    damage(built)
    with pytest.raises(RagIndexError, match=message):
        load_index(built, embedder=KeywordEmbedder())
    assert main(["index", "search", str(built), "alpha", "--mode", "bm25"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {built}/") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"segments": ["../docs"]}, "segment name '../docs'"),
        ({"files": {"docs/a.txt": {"segment": "seg-0009", "rows": [0, 1]}}}, "names no listed"),
        ({"n_chunks": "3"}, "'n_chunks' missing or not a int"),
        ({"segment_rows": {"seg-0001": 7}}, "the manifest says 7"),
    ],
)
def test_a_manifest_with_wrong_fields_is_refused(built, edit, problem):
    manifest = json.loads((built / "manifest.json").read_text())
    (built / "manifest.json").write_text(json.dumps(manifest | edit))
    with pytest.raises(RagIndexError, match=problem):
        load_index(built)
