"""Keep a build's test questions out of its training files.

Two rules, applied to every train and val split after the splits are made: a row
that asks a test question verbatim is always dropped (``test_question``), and,
with ``data.decontaminate``, a row sharing a 13-gram with an eval set
(``decontaminated``; :class:`tutorlm.data.rules.dedup.EvalIndex`). Each drop is
counted per source in the manifest.
"""

from __future__ import annotations

from pathlib import Path

from tutorlm.data.examples import DataError
from tutorlm.data.rules.dedup import EvalIndex, HeldOutQuestions


def _leaves_rows(rows: list, clean: list, rule: str, file: str) -> list:
    if rows and not clean:
        raise DataError(f"rule '{rule}' left 0 of {len(rows)} rows in {file}")
    return clean


def _drop_matching(built, training, stats, matches, reason: str) -> dict[str, int]:
    """Drop the training rows whose record ``matches``; count them by file and source."""
    dropped: dict[str, int] = {}
    for file, stem, split in training:
        rows, clean = built[stem][split], []
        for row in rows:
            if matches(row.record):
                stats[row.source].drop(reason)
                dropped[file] = dropped.get(file, 0) + 1
            else:
                clean.append(row)
        built[stem][split] = _leaves_rows(rows, clean, reason, file)
    return dropped


def decontaminate(built, outputs, data, stats) -> dict:
    """Drop train/val rows that ask a test question verbatim (always), then those that
    share an n-gram with an eval set (``data.decontaminate``); returns the eval files
    and the rows each rule removed, by file."""
    index = EvalIndex(n=data.ngram, template_groups=data.template_groups)
    questions = HeldOutQuestions()
    eval_files, training = [], []
    for output in outputs:
        for split, rows in built[output.stem].items():
            if output.is_eval(split):
                eval_files.append(output.file(split))
                for row in rows:
                    index.add_record(row.record, output.file(split), row.group)
                    questions.add_record(row.record, output.file(split))
            else:
                training.append((output.file(split), output.stem, split))
    for path in data.extra_eval_files:
        if not Path(path).is_file():
            raise DataError(f"extra_eval_files: {path}: no such file")
        index.add_file(path)
        questions.add_file(path)
        eval_files.append(Path(path).name)
    leaked = _drop_matching(built, training, stats, questions.match, "test_question")
    result = {"eval_sets": eval_files, "removed": {}, "test_questions": leaked}
    if not data.decontaminate:
        return result
    for _, stem, split in training:
        for row in built[stem][split]:
            index.note_training(row.record, row.group)
    result["removed"] = _drop_matching(built, training, stats, index.match, "decontaminated")
    return result
