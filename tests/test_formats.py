"""Record formats: good files round-trip, each kind of bad row is named."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat

import numpy as np
import pytest
from safetensors.numpy import save_file

from tutorlm.data.formats import (
    MCQARecord,
    PreferenceRecord,
    RecordError,
    RecordFileError,
    SFTRecord,
    atomic_write_text,
    file_sha256,
    follow_umask,
    read_records,
    write_records,
)

SFT = {
    "id": "s1",
    "source": "demo",
    "messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ],
}
PREF = {
    "id": "p1",
    "source": "demo",
    "prompt": [{"role": "user", "content": "2+2?"}],
    "chosen": [{"role": "assistant", "content": "4"}],
    "rejected": [{"role": "assistant", "content": "5"}],
    "meta": {"method": "rule"},
}
MCQA = {"id": "m1", "source": "demo", "question": "2+2?", "choices": ["3", "4"], "answer": 1}


def _write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("kind", "row", "cls"),
    [("sft", SFT, SFTRecord), ("preference", PREF, PreferenceRecord), ("mcqa", MCQA, MCQARecord)],
)
def test_round_trip_is_byte_identical(tmp_path, kind, row, cls):
    source = _write_lines(tmp_path / "in.jsonl", [row, {**row, "id": "second"}])
    result = read_records(source, kind)
    assert [type(r) for r in result.records] == [cls, cls]
    assert result.n_bad == 0
    out = tmp_path / "out.jsonl"
    assert write_records(out, result.records) == 2
    assert out.read_text() == source.read_text()


@pytest.mark.parametrize(
    ("kind", "row", "field", "words"),
    [
        ("sft", {**SFT, "messages": [{"role": "user", "content": "hi"}]}, "messages", "assistant"),
        (
            "sft",
            {**SFT, "messages": [{"role": "bot", "content": "x"}]},
            "messages.0.role",
            "'system'",
        ),
        ("sft", {k: v for k, v in SFT.items() if k != "id"}, "id", "missing"),
        (
            "preference",
            {**PREF, "chosen": [{"role": "assistant", "content": " "}]},
            "chosen",
            "empty",
        ),
        ("mcqa", {**MCQA, "answer": 2}, "answer", "out of range"),
        ("mcqa", {**MCQA, "choices": "ab"}, "choices", "list"),
        ("mcqa", {**MCQA, "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, kind, row, field, words):
    path = _write_lines(tmp_path / "bad.jsonl", [_good(kind), row])
    with pytest.raises(RecordError) as caught:
        read_records(path, kind)
    error = caught.value
    assert (error.line, error.field) == (2, field)
    assert str(error).startswith(f"{path}:2: field '{field}'")
    assert words in error.problem


def _good(kind):
    return {"sft": SFT, "preference": PREF, "mcqa": MCQA}[kind]


def test_broken_json_line_is_named(tmp_path):
    path = _write_lines(tmp_path / "broken.jsonl", [MCQA, '{"id": "x", ', MCQA])
    with pytest.raises(RecordError, match=r"broken.jsonl:2: field '\(line\)': not valid JSON"):
        read_records(path, "mcqa")


def test_lenient_mode_skips_and_counts_by_reason(tmp_path):
    rows = [
        MCQA,
        {**MCQA, "answer": 5},
        "not json",
        {**MCQA, "answer": 9},
        [1, 2],
        {**MCQA, "id": "m2"},
    ]
    result = read_records(_write_lines(tmp_path / "mixed.jsonl", rows), "mcqa", strict=False)
    assert len(result.records) == 2
    assert result.n_bad == 4
    assert result.bad["answer: answer 5 is out of range for 2 choices"] == 1
    assert result.bad["answer: answer 9 is out of range for 2 choices"] == 1
    assert result.bad["(line): not valid JSON (Expecting value)"] == 1
    assert result.bad["(line): expected a JSON object"] == 1
    assert [e.line for e in result.errors] == [2, 3, 4, 5]


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "deep" / "out.jsonl"
    write_records(out, [MCQARecord.model_validate(MCQA)])
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]
    assert json.loads(out.read_text()) == MCQA


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    )
    path.write_bytes(bytes(range(256)) * 5000)  # more than one read block
    assert file_sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_kind_is_rejected(tmp_path):
    path = _write_lines(tmp_path / "x.jsonl", [MCQA])
    with pytest.raises(ValueError, match="unknown record kind 'qa'"):
        read_records(path, "qa")


def _mcqa_line(**changes) -> bytes:
    return (json.dumps(MCQA | changes, ensure_ascii=False) + "\n").encode()


def _validate(path, capsys) -> tuple[int, str]:
    from tutorlm.cli import main

    status = main(["data", "validate", str(path), "--kind", "mcqa"])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_validate_counts_undecodable_deep_huge_and_duplicate_rows(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + _mcqa_line(id="m1")  # a UTF-8 byte-order mark before the first line is fine
        + _mcqa_line(id="m2", question="caf\u00e9").replace("\u00e9".encode(), b"\xe9")
        + b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
        + b'{"id": "m4", "answer": ' + b"9" * 5001 + b"}\n"
        + _mcqa_line(id="m1")
        + _mcqa_line(id="m5")
    )  # fmt: skip
    result = read_records(path, "mcqa", strict=False)
    assert [r.id for r in result.records] == ["m1", "m5"]
    assert [str(e) for e in result.errors] == [
        f"{path}:2: field '(line)': not UTF-8 text; byte 47 is 0xe9",
        f"{path}:3: field '(line)': nested too deeply to read",
        f"{path}:4: field '(line)': a number too long to read",
        f"{path}:5: field 'id': duplicate; 'm1' is first on line 1",
    ]
    status, out = _validate(path, capsys)
    assert status == 1
    assert out.splitlines()[:5] == [
        f"{path}: 2 good mcqa records, 4 bad",
        "       1  (line): not UTF-8 text",
        "       1  (line): nested too deeply to read",
        "       1  (line): a number too long to read",
        "       1  id: duplicate",
    ]
    duplicated = tmp_path / "duplicated.jsonl"
    duplicated.write_bytes(_mcqa_line(id="m1") + b"\n" + _mcqa_line(id="m1"))
    with pytest.raises(RecordError, match=r":3: field 'id': duplicate; 'm1' is first on line 1"):
        read_records(duplicated, "mcqa", strict=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("\ufeff{}\n".encode("utf-16"), "UTF-16 text, not UTF-8 JSON Lines"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data (NUL bytes), not UTF-8 JSON Lines"),
    ],
    ids=["utf16", "binary"],
)
def test_validate_refuses_binary_and_utf16_files_in_one_line(tmp_path, capsys, data, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    with pytest.raises(RecordFileError, match=re.escape(message)):
        read_records(path, "mcqa", strict=False)
    assert _validate(path, capsys) == (1, f"error: {path}: {message}\n")


def test_validate_fails_on_an_empty_file(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n  \n")
    assert _validate(path, capsys) == (1, f"{path}: no mcqa records (the file is empty)\n")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask_like_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.html", "<p>hi</p>\n")
        (tmp_path / "plain.txt").write_text("hi\n")
        model = tmp_path / "model"
        model.mkdir(mode=0o700)
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(model / "model.safetensors"))
        follow_umask(model)
    finally:
        os.umask(old)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == plain
    assert stat.S_IMODE((model / "model.safetensors").stat().st_mode) == plain
    assert stat.S_IMODE(model.stat().st_mode) == 0o777 & ~umask
