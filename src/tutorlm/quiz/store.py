"""Per-student results in a local SQLite file (never sent anywhere).

One row per finished attempt (student, quiz, when, score) and one per answer
(question, section, reply, verdict), so a course can see which sections a student
keeps missing. The file is created on first use; nothing is stored unless a
student name and a results file are given.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from tutorlm.errors import TutorlmError
from tutorlm.quiz.grade import Graded, summarize

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    student TEXT NOT NULL,
    quiz TEXT NOT NULL,
    finished TEXT NOT NULL,
    score INTEGER NOT NULL,
    total INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    attempt INTEGER NOT NULL REFERENCES attempts(id),
    question TEXT NOT NULL,
    section TEXT NOT NULL,
    reply TEXT NOT NULL,
    correct INTEGER NOT NULL,
    why TEXT NOT NULL
);
"""


class ResultsError(TutorlmError):
    """A results file that cannot be opened or written."""


def _connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        connection = sqlite3.connect(path)
        connection.executescript(SCHEMA)
    except sqlite3.DatabaseError as error:
        raise ResultsError(f"{path}: not a quiz results file ({error})") from None
    return connection


def save_attempt(
    path: str | Path, student: str, quiz: str, graded: Sequence[Graded], when: str | None = None
) -> int:
    """Store one finished attempt; returns its id."""
    if not student.strip():
        raise ResultsError("a student name is needed to save results")
    summary = summarize(graded)
    when = when or datetime.now(UTC).isoformat(timespec="seconds")
    with closing(_connect(path)) as connection, connection:
        cursor = connection.execute(
            "INSERT INTO attempts (student, quiz, finished, score, total) VALUES (?, ?, ?, ?, ?)",
            (student.strip(), quiz, when, summary.score, summary.total),
        )
        attempt = int(cursor.lastrowid)
        connection.executemany(
            "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    attempt,
                    item.question.id,
                    f"{item.question.file} > {item.question.section}",
                    item.reply,
                    int(item.correct),
                    item.why,
                )
                for item in graded
            ],
        )
    return attempt


def attempts(path: str | Path, student: str | None = None) -> list[dict]:
    """The stored attempts, oldest first (one student's, or everyone's)."""
    with closing(_connect(path)) as connection:
        query = "SELECT id, student, quiz, finished, score, total FROM attempts"
        rows = connection.execute(
            query + (" WHERE student = ? ORDER BY id" if student else " ORDER BY id"),
            (student,) if student else (),
        ).fetchall()
    keys = ("id", "student", "quiz", "finished", "score", "total")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def missed_sections(path: str | Path, student: str) -> list[tuple[str, int]]:
    """A student's sections by how many answers in them were wrong, most first."""
    with closing(_connect(path)) as connection:
        return connection.execute(
            "SELECT section, COUNT(*) FROM answers JOIN attempts ON attempts.id = answers.attempt "
            "WHERE student = ? AND correct = 0 GROUP BY section ORDER BY COUNT(*) DESC, section",
            (student,),
        ).fetchall()
