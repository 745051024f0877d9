"""The record formats every stage reads and writes (JSON Lines, one record a line).

- SFT: ``{"id", "source", "messages": [{"role", "content"}, ...]}``
- Preference: ``{"id", "source", "prompt": [...], "chosen": [...], "rejected": [...], "meta"}``
- MCQA: ``{"id", "source", "question", "choices": [str, ...], "answer": int, "subject"?, "meta"?}``

They are TRL's conversational formats where TRL has one, so the trainers take them
as they are. Data is converted into these once, at the boundary; nothing after
the data stage parses raw files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tutorlm.errors import TutorlmError

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)


class SFTRecord(_Record):
    """A conversation to imitate; the loss falls on assistant turns."""

    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _has_assistant_turn(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "assistant" for m in messages):
            raise ValueError("needs at least one assistant message")
        if messages[-1].role != "assistant":
            raise ValueError("the last message must be the assistant's")
        if any(not m.content.strip() for m in messages if m.role == "assistant"):
            raise ValueError("assistant message is empty")
        return messages


class PreferenceRecord(_Record):
    """A prompt with a preferred and a dispreferred assistant reply."""

    prompt: list[Message] = Field(min_length=1)
    chosen: list[Message] = Field(min_length=1)
    rejected: list[Message] = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("chosen", "rejected")
    @classmethod
    def _non_empty_reply(cls, reply: list[Message]) -> list[Message]:
        if not any(m.content.strip() for m in reply):
            raise ValueError("reply is empty")
        return reply


class MCQARecord(_Record):
    """A multiple-choice question; ``answer`` indexes ``choices``."""

    question: str = Field(min_length=1)
    choices: list[str] = Field(min_length=2)
    answer: int = Field(ge=0)
    subject: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer")
    @classmethod
    def _answer_in_range(cls, answer: int, info) -> int:
        choices = info.data.get("choices")
        if choices is not None and answer >= len(choices):
            raise ValueError(f"answer {answer} is out of range for {len(choices)} choices")
        return answer


Record = SFTRecord | PreferenceRecord | MCQARecord
RECORD_TYPES: dict[str, type[_Record]] = {
    "sft": SFTRecord,
    "preference": PreferenceRecord,
    "mcqa": MCQARecord,
}


class RecordError(TutorlmError, ValueError):
    """A bad row, named by file, line and field."""

    def __init__(self, path: Path | str, line: int, field_name: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field_name, problem
        super().__init__(f"{path}:{line}: field '{field_name}': {problem}")

    @property
    def reason(self) -> str:
        """A short key to count bad rows by: field and kind of problem."""
        return f"{self.field}: {self.problem.split(';')[0]}"


class RecordFileError(TutorlmError, ValueError):
    """A file that is not UTF-8 JSON Lines at all (binary, UTF-16), named by path."""


@dataclass
class ReadResult:
    """What a lenient read kept and what it skipped."""

    records: list = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)
    errors: list[RecordError] = field(default_factory=list)

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())


def _describe_validation(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(record)"
    kind = first["type"]
    if kind == "missing":
        problem = "missing (required)"
    elif kind == "extra_forbidden":
        problem = "unknown field"
    else:
        expected = first["msg"].removeprefix("Value error, ")
        got = first.get("input")
        shown = json.dumps(got)[:60] if not isinstance(got, dict) else "an object"
        problem = f"{expected}; got {shown}"
    return location, problem


def _record_type(kind: str) -> type[_Record]:
    if kind not in RECORD_TYPES:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(RECORD_TYPES)}")
    return RECORD_TYPES[kind]


def parse_record(line: str, kind: str, *, path: Path | str = "<string>", line_number: int = 1):
    """Parse one JSONL line into a record, or raise ``RecordError``."""
    record_type = _record_type(kind)
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as error:
        raise RecordError(path, line_number, "(line)", f"not valid JSON ({error.msg})") from None
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise RecordError(path, line_number, "(line)", "a number too long to read") from None
    except RecursionError:
        raise RecordError(path, line_number, "(line)", "nested too deeply to read") from None
    if not isinstance(raw, dict):
        raise RecordError(path, line_number, "(line)", "expected a JSON object")
    try:
        return record_type.model_validate(raw)
    except ValidationError as error:
        location, problem = _describe_validation(error)
        raise RecordError(path, line_number, location, problem) from None


def _lines(path: Path) -> Iterator[tuple[int, str | RecordError]]:
    """Each non-blank line of a JSON Lines file as text, or the error that it is not text.

    A UTF-8 byte-order mark is dropped; a line that is not UTF-8 is a bad row.

    Raises:
        RecordFileError: the file is binary or UTF-16 (NUL bytes near its start): every
            "line" of it would be bad, and one of them may be the whole file.
    """
    with path.open("rb") as handle:
        head = handle.read(8192)
        if b"\x00" in head or head.startswith((b"\xff\xfe", b"\xfe\xff")):
            utf16 = head.startswith((b"\xff\xfe", b"\xfe\xff"))
            kind = "UTF-16 text" if utf16 else "binary data (NUL bytes)"
            raise RecordFileError(f"{path}: {kind}, not UTF-8 JSON Lines")
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problem = f"not UTF-8 text; byte {error.start} is {raw[error.start]:#04x}"
                yield number, RecordError(path, number, "(line)", problem)
                continue
            if line.strip():
                yield number, line


def _records(path: Path, kind: str) -> Iterator[RecordError | Any]:
    """Each row of a file as a record or the ``RecordError`` that says why it is bad.

    An id already used by an earlier row is bad: ``data build`` refuses duplicate
    ids, and a later stage matching rows by id would pick one of them at random.
    """
    first_line: dict[str, int] = {}
    for number, line in _lines(path):
        if isinstance(line, RecordError):
            yield line
            continue
        try:
            record = parse_record(line, kind, path=path, line_number=number)
        except RecordError as error:
            yield error
            continue
        if record.id in first_line:
            problem = f"duplicate; {record.id!r} is first on line {first_line[record.id]}"
            yield RecordError(path, number, "id", problem)
        else:
            first_line[record.id] = number
            yield record


def iter_records(path: Path | str, kind: str) -> Iterator:
    """Yield records of a file one by one; the first bad row raises ``RecordError``."""
    for item in _records(Path(path), kind):
        if isinstance(item, RecordError):
            raise item
        yield item


def read_records(path: Path | str, kind: str, *, strict: bool = True) -> ReadResult:
    """Read a JSONL file of one record kind.

    Args:
        path: the file.
        kind: ``sft``, ``preference`` or ``mcqa``.
        strict: stop at the first bad row (raise ``RecordError``); otherwise skip
            bad rows and count them by reason.

    Raises:
        RecordFileError: a binary or UTF-16 file, in either mode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    _record_type(kind)
    result = ReadResult()
    for item in _records(path, kind):
        if not isinstance(item, RecordError):
            result.records.append(item)
        elif strict:
            raise item
        else:
            result.bad[item.reason] += 1
            if len(result.errors) < 20:
                result.errors.append(item)
    return result


def record_to_dict(record) -> dict:
    """A record as a plain dict, leaving out optional fields that are unset."""
    data = record.model_dump()
    if isinstance(record, MCQARecord):
        if data.get("subject") is None:
            data.pop("subject")
        if not data.get("meta"):
            data.pop("meta")
    return data


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes (hex): what manifests record of every file they list."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def umask_mode(*, folder: bool = False) -> int:
    """The mode ``open`` (``mkdir``) gives a new file (folder) under the process umask.

    ``tempfile.mkstemp`` / ``mkdtemp`` make theirs private (0600 / 0700), and so does
    safetensors' ``save_file``; an atomic write must not leave a report or a model
    unreadable to the group when every other file of the run is readable.
    """
    return (0o777 if folder else 0o666) & ~_umask()


def _umask() -> int:
    try:  # Linux states it; os.umask can only read it by changing it for every thread
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path | str) -> None:
    """Give a file, or a folder and everything in it, the modes the umask gives new ones."""
    path = Path(path)
    if path.is_dir():
        for inner in path.rglob("*"):
            if not inner.is_symlink():
                inner.chmod(umask_mode(folder=inner.is_dir()))
    path.chmod(umask_mode(folder=path.is_dir()))


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half.

    The file gets the umask's mode, as a plain ``open`` would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(handle, umask_mode())
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_records(path: Path | str, records: Iterable) -> int:
    """Write records (pydantic models or dicts) as JSONL atomically; returns the count."""
    lines = []
    for record in records:
        data = record if isinstance(record, dict) else record_to_dict(record)
        lines.append(json.dumps(data, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
