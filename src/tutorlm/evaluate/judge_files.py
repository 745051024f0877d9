"""The judge on files: two sets of replies in, a win rate and the judge's worth out.

A replies file is JSONL, one reply per line, matched across the two files by ``id``;
tutorlm's own per-item files are read as they are:

- ``reply`` (tutor predictions, ``predictions.tutor-<metric>.jsonl``), else
  ``prediction`` (generation samples, ``generations.<task>.jsonl``), else ``response``:
  the reply judged;
- ``question``, else the last user turn of ``prompt`` / ``messages`` (a list of chat
  turns; in the served tutor's prompt the text after the notes' ``Question:``), else a
  string ``prompt``: the question shown to the judge (from A's file, else B's);
- ``reference`` (generation samples), else ``answer``: shown as the reference answer;
- ``verdict`` (a grader's true / false / null): the key, used to measure the judge's
  agreement with it.

Every run writes ``judge.pairs.jsonl`` (each pair, both orders' raw outputs and
reasons), ``judge.json`` (the record: judge model, endpoint, prompt and its sha256,
date, settings; the figures) and ``judge.md`` (the report).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tutorlm.data.formats import atomic_write_text
from tutorlm.evaluate.judge import (
    JudgeConfig,
    JudgeError,
    Pair,
    judge_agreement,
    judge_pairs,
    judge_record,
    judge_strength,
    summarize,
)
from tutorlm.evaluate.judge_backends import ChatBackend, open_backend

REPLY_FIELDS = ("reply", "prediction", "response")
QUESTION_MARK = "\n\nQuestion: "
"""Where the served tutor's prompt puts the question after the numbered notes
(:func:`tutorlm.rag.prompt.build_rag_messages`)."""


def _question(row: dict) -> str | None:
    if isinstance(row.get("question"), str):
        return row["question"]
    turns = row.get("prompt") if isinstance(row.get("prompt"), list) else row.get("messages")
    if isinstance(turns, list):
        users = [
            t.get("content", "") for t in turns if isinstance(t, dict) and t.get("role") == "user"
        ]
        if users:
            return users[-1].rpartition(QUESTION_MARK)[2].strip()
    return row["prompt"] if isinstance(row.get("prompt"), str) else None


def read_replies(path: Path | str) -> dict[str, dict]:
    """``{id: {"question", "reply", "reference", "verdict"}}`` of a replies file.

    Raises:
        JudgeError: a line that is not JSON, has no ``id`` or no reply field, or an id twice.
    """
    path = Path(path)
    found: dict[str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as error:
            raise JudgeError(f"{where}: not JSON ({error})") from None
        if not isinstance(row, dict) or "id" not in row:
            raise JudgeError(f"{where}: a reply needs an id")
        reply = next((row[f] for f in REPLY_FIELDS if isinstance(row.get(f), str)), None)
        if reply is None:
            raise JudgeError(f"{where}: no reply field (one of {', '.join(REPLY_FIELDS)})")
        key = str(row["id"])
        if key in found:
            raise JudgeError(f"{where}: id {key!r} is used twice")
        reference = row.get("reference", row.get("answer"))
        verdict = row.get("verdict")
        found[key] = {
            "question": _question(row),
            "reply": reply,
            "reference": reference if isinstance(reference, str) and reference else None,
            "verdict": verdict if isinstance(verdict, bool) else None,
        }
    return found


def pair_replies(a: dict[str, dict], b: dict[str, dict], *, where: str = "") -> list[Pair]:
    """The pairs of the ids both sets answer, in A's order.

    Raises:
        JudgeError: no id in common, or a pair with no question in either file.
    """
    pairs = []
    for key, left in a.items():
        if key not in b:
            continue
        right = b[key]
        question = left["question"] or right["question"]
        if not question:
            raise JudgeError(
                f"{where}id {key!r}: no question in either file (a question field, or a "
                "prompt / messages list with a user turn)"
            )
        reference = left["reference"] or right["reference"]
        pairs.append(Pair(key, question, left["reply"], right["reply"], reference))
    if not pairs:
        raise JudgeError(f"{where}the two reply sets share no id")
    return pairs


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _interval(entry: dict) -> str:
    if not entry["n"]:
        return "–"
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def judge_markdown(result: dict) -> str:
    """The report: the judge's strength first, then the win rate, behaviour and agreement."""
    record, summary = result["judge"], result["summary"]
    label_a, label_b = result["labels"]
    lines = [f"# {label_a} vs {label_b}, judged by {record['model']}", ""]
    if result["strength"] == "weak":
        lines += ["**Weak judge**: " + "; ".join(result["strength_reasons"]) + ".", ""]
    elif result["strength"] == "unmeasured":
        lines += ["**Unmeasured judge**: no key-graded pair to check its verdicts on.", ""]
    counts = summary["counts"]
    lines += [
        "| figure | value |",
        "| --- | --- |",
        f"| win rate of {label_a} over {label_b} [95 % CI] | {_interval(summary['win_rate'])} |",
        f"| pairs (judged) | {summary['pairs']} ({summary['judged']}) |",
        f"| {label_a} wins / {label_b} wins / ties / inconsistent / unparsed | "
        f"{counts['A']} / {counts['B']} / {counts['tie']} / {counts['inconsistent']} / "
        f"{counts['unparsed']} |",
        f"| inconsistent (position flip) | {_pct(summary['inconsistent_rate'])} |",
        f"| first position named | {_pct(summary['first_position_rate'])} |",
        f"| re-asks for unparseable output | {summary['reasks']} |",
        "",
    ]
    if result["agreements"]:
        lines += [
            "Agreement with the keys (pairs where exactly one reply is key-graded right; "
            "ties count half):",
            "",
            "| key | agreement [95 % CI] | prefers key / other / undecided / unparsed | "
            "both right / both wrong |",
            "| --- | --- | --- | --- |",
        ]
        for entry in result["agreements"]:
            lines.append(
                f"| {entry['name']} | {_interval(entry['agreement'])} | {entry['prefers_key']} / "
                f"{entry['prefers_other']} / {entry['undecided']} / {entry['unparsed']} | "
                f"{entry['both_right']} / {entry['both_wrong']} |"
            )
        lines.append("")
    lines += [
        f"Judge: `{record['model']}` at {record['endpoint']}; prompt {record['prompt_version']} "
        f"(sha256 {record['prompt_sha256'][:12]}); {record['date']}.",
    ]
    return "\n".join(lines) + "\n"


def judge_sets(
    pairs: Sequence[Pair],
    config: JudgeConfig,
    out_dir: Path | str,
    *,
    keys: dict[str, dict[str, tuple[bool | None, bool | None]]] | None = None,
    labels: tuple[str, str] = ("A", "B"),
    inputs: dict | None = None,
    backend: ChatBackend | None = None,
    resamples: int = 1000,
    seed: int = 0,
    echo=print,
) -> dict:
    """Judge ``pairs``, measure agreement with each key, write the three files.

    Args:
        pairs: replies of set A and set B to the same questions.
        config: the judge.
        out_dir: where ``judge.pairs.jsonl``, ``judge.json`` and ``judge.md`` go.
        keys: by key name (a predictions file), ``{id: (A right, B right)}``.
        labels: names of set A and set B in the report.
        inputs: what the replies were read from, for the record.
        backend: a ready backend (default :func:`open_backend` of ``config``).
        resamples, seed: of the bootstrap intervals.
        echo: called with one progress line at a time.

    Returns:
        ``judge`` (the record), ``summary``, ``agreements``, ``strength``,
        ``strength_reasons``, ``labels``, ``inputs`` and ``files``.
    """
    out_dir = Path(out_dir)
    backend = backend or open_backend(config)
    echo(f"judging {len(pairs)} pairs in both orders with {backend.model} ({backend.where})")
    rows = judge_pairs(pairs, backend, config)
    agreements = [
        {"name": name, **judge_agreement(rows, verdicts, resamples=resamples, seed=seed)}
        for name, verdicts in (keys or {}).items()
    ]
    agreements = [a for a in agreements if a["agreement"]["n"] or a["unparsed"]]
    strength, reasons = judge_strength(backend.model, agreements)
    result = {
        "judge": judge_record(backend, config),
        "labels": list(labels),
        "inputs": inputs or {},
        "summary": summarize(rows, resamples=resamples, seed=seed),
        "agreements": agreements,
        "strength": strength,
        "strength_reasons": reasons,
        "files": {
            "pairs": str(out_dir / "judge.pairs.jsonl"),
            "json": str(out_dir / "judge.json"),
            "markdown": str(out_dir / "judge.md"),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(
        json.dumps({**row, "labels": list(labels)}, ensure_ascii=False) + "\n" for row in rows
    )
    atomic_write_text(out_dir / "judge.pairs.jsonl", text)
    atomic_write_text(
        out_dir / "judge.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    )
    atomic_write_text(out_dir / "judge.md", judge_markdown(result))
    return result


def judge_files(
    file_a: Path | str,
    file_b: Path | str,
    config: JudgeConfig,
    out_dir: Path | str,
    *,
    labels: tuple[str, str] | None = None,
    backend: ChatBackend | None = None,
    resamples: int = 1000,
    seed: int = 0,
    echo=print,
) -> dict:
    """``tutorlm judge A.jsonl B.jsonl``: pair by id, judge, agree with the files' verdicts."""
    a, b = read_replies(file_a), read_replies(file_b)
    pairs = pair_replies(a, b, where=f"{file_a} / {file_b}: ")
    keys = {Path(file_a).name: {p.id: (a[p.id]["verdict"], b[p.id]["verdict"]) for p in pairs}}
    inputs = {
        "a": str(file_a),
        "b": str(file_b),
        "only_a": len(a) - len(pairs),
        "only_b": len(b) - len(pairs),
    }
    return judge_sets(
        pairs,
        config,
        out_dir,
        keys=keys,
        labels=labels or (Path(file_a).stem, Path(file_b).stem),
        inputs=inputs,
        backend=backend,
        resamples=resamples,
        seed=seed,
        echo=echo,
    )


def reply_files(eval_dir: Path | str) -> list[Path]:
    """The per-item files of an eval folder that carry replies: tutor predictions and
    generation samples (MCQA predictions hold letters, not replies)."""
    folder = Path(eval_dir)
    found = sorted(folder.glob("predictions.tutor-*.jsonl")) + sorted(
        folder.glob("generations.*.jsonl")
    )
    return found


def judge_eval_dirs(
    config: JudgeConfig,
    dir_a: Path | str,
    dir_b: Path | str,
    out_dir: Path | str,
    *,
    labels: tuple[str, str] = ("A", "B"),
    backend: ChatBackend | None = None,
    resamples: int = 1000,
    seed: int = 0,
    echo=print,
) -> dict | None:
    """The eval-time judge: two eval folders' replies to the same items, judged.

    For the RAG ablation (the tutor tasks asked with notes and without) and the
    M2-vs-M0 comparison (two models' eval folders). Every reply file present in both
    folders (:func:`reply_files`) is read; an item's reply is judged once however
    many metric files hold it, and each file with verdicts is a key the judge's
    agreement is measured against. Returns None when the folders share no reply file.
    """
    names = sorted({p.name for p in reply_files(dir_a)} & {p.name for p in reply_files(dir_b)})
    if not names:
        echo(f"judge: {dir_a} and {dir_b} share no reply file (tutor predictions, generations)")
        return None
    merged_a: dict[str, dict] = {}
    merged_b: dict[str, dict] = {}
    keys: dict[str, dict[str, tuple]] = {}
    for name in names:
        a, b = read_replies(Path(dir_a) / name), read_replies(Path(dir_b) / name)
        common = [key for key in a if key in b]
        for key in common:
            merged_a.setdefault(key, a[key])
            merged_b.setdefault(key, b[key])
        verdicts = {key: (a[key]["verdict"], b[key]["verdict"]) for key in common}
        if any(x is not None and y is not None for x, y in verdicts.values()):
            keys[name.removesuffix(".jsonl")] = verdicts
    pairs = pair_replies(merged_a, merged_b, where=f"{dir_a} / {dir_b}: ")
    inputs = {"a": str(dir_a), "b": str(dir_b), "files": names}
    return judge_sets(
        pairs, config, out_dir, keys=keys, labels=labels, inputs=inputs,
        backend=backend, resamples=resamples, seed=seed, echo=echo,
    )  # fmt: skip
