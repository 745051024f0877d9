"""Local JSON Lines files: records in our formats, or rows with a column mapping.

The reports' private student-annotated pairs arrive this way, e.g.::

    - type: jsonl
      name: epfl_pairs
      path: data/epfl_pairs.jsonl
      shape: annotated
      columns: {question: question_complete, a: A, b: B, overall: overall,
                correctness: correctness, group: question_id}
      annotated: probllms
"""

from __future__ import annotations

import json
from pathlib import Path

from tutorlm.data.examples import DataError, Example
from tutorlm.data.formats import RecordError, file_sha256, iter_records
from tutorlm.data.sources.base import Reader
from tutorlm.data.sources.rows import (
    REQUIRED,
    check_columns,
    check_mapping,
    convert_row,
    mapping_columns,
)


class JsonlReader(Reader):
    """One local JSONL file."""

    shapes = tuple(REQUIRED)

    @property
    def path(self) -> Path:
        return Path(self.config.path)

    @property
    def format(self) -> str | None:
        return self.config.format

    @property
    def shape(self) -> str:
        if self.config.shape == "auto" and not self.config.format:
            raise DataError(f"source '{self.name}': give format (our records) or shape + columns")
        return super().shape

    def check(self) -> None:
        if not self.path.is_file():
            raise DataError(f"source '{self.name}': {self.path}: no such file")
        if self.format:
            if self.format != self.kind:
                raise DataError(
                    f"source '{self.name}': holds {self.format} records but feeds the "
                    f"{self.kind} section"
                )
            return
        super().check()
        check_mapping(self.name, self.shape, self.config.columns)
        with self.path.open(encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), None)
        if first is None:
            raise DataError(f"source '{self.name}': {self.path} is empty")
        try:
            present = set(json.loads(first))
        except json.JSONDecodeError as error:
            raise DataError(f"{self.path}:1: not valid JSON ({error.msg})") from None
        check_columns(self.name, present, mapping_columns(self.shape, self.config.columns))

    def records(self):
        """The records of a file in our formats (a bad row stops the build, named)."""
        try:
            yield from iter_records(self.path, self.format)
        except RecordError as error:
            raise DataError(f"source '{self.name}': {error}") from None

    def rows(self):
        def parsed():
            with self.path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(
                            f"{self.path}:{number}: not valid JSON ({error.msg})"
                        ) from None
                    missing = [
                        c for c in mapping_columns(self.shape, self.config.columns) if c not in row
                    ]
                    if missing:
                        raise DataError(f"{self.path}:{number}: column {missing[0]!r} missing")
                    yield row

        return parsed(), None

    def to_example(self, row, index: int) -> Example:
        return convert_row(row, index, self.shape, self.config.columns, None)

    def group_namespace(self) -> str:
        return f"file:{self.path.resolve()}"

    def fingerprint(self) -> dict:
        return {"path": str(self.path), "sha256": file_sha256(self.path)}
