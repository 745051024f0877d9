"""A judge model compares two replies to the same question, in both orders.

Free-form tutoring replies often have no key to grade against, so a second model
(any OpenAI-compatible endpoint: vLLM on a GPU, a hosted model, another tutorlm; or,
in a pinch, a local model spec through :mod:`tutorlm.bulk`) is asked which of two
replies is better. How far its verdicts can be trusted is measured, not assumed:
:func:`judge_agreement` checks it against the key-graded items where both exist.

Rules, each for a reason:

- **One fixed, versioned prompt** (:data:`JUDGE_PROMPT_VERSION`); the run records its
  text and sha256, so two runs' win rates are comparable only when those match.
- **Both orders.** Judges, small ones most, prefer a position. Each pair is asked as
  (A, B) and as (B, A); a reply wins only when it wins in both. A winner in one order
  and a tie in the other is a tie; opposite winners (a position flip) are
  ``inconsistent``, scored as a tie, and their share is reported: a judge that always
  says "A" scores every pair 0.5.
- **A strict output format** (``Verdict: A|B|tie`` and ``Reason: ...`` lines). Output
  that does not parse is asked again at ``retry_temperature`` (greedy decoding would
  repeat itself), up to ``parse_retries`` times; a pair still unparsed in either
  order is left out of the win rate and counted as ``unparsed``.
- **Win rate of A over B** with ties (and inconsistent pairs) as half, and a
  percentile bootstrap 95 % interval over pairs (:mod:`tutorlm.evaluate.stats`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tutorlm.errors import TutorlmError
from tutorlm.evaluate.config import JudgeConfig
from tutorlm.evaluate.stats import bootstrap_interval

JUDGE_PROMPT_VERSION = "tutorlm-judge-v1"

JUDGE_SYSTEM = (
    "You are a strict, fair grader of a tutor's replies to a student. You compare two "
    "replies to the same question and say which one is better."
)

JUDGE_TEMPLATE = """\
Which reply answers the student's question better? Judge correctness first, then \
clarity and helpfulness. A longer reply is not better for being longer. Say "tie" when \
neither is better.

Question:
{question}
{reference}
Reply A:
{first}

Reply B:
{second}

Answer in exactly two lines, nothing else:
Verdict: A, B or tie
Reason: one sentence"""

REFERENCE_BLOCK = "\nReference answer (a reply that agrees with it is correct):\n{reference}\n"

VERDICTS = ("A", "B", "tie")
OUTCOMES = ("A", "B", "tie", "inconsistent", "unparsed")
"""A pair's verdict: a reply won in both orders, a tie, a position flip, or no
parseable answer in one order."""
SCORES = {"A": 1.0, "B": 0.0, "tie": 0.5, "inconsistent": 0.5}
"""What a pair adds to the win rate of A over B (unparsed pairs add nothing)."""

_VERDICT_LINE = re.compile(r"^[\W_]*verdict[\W_]*?[:\-][ \t]*(.*)$", re.I | re.M)
_REASON_LINE = re.compile(r"^[\W_]*reason[\W_]*?[:\-][ \t]*(.*)$", re.I | re.M)
_WEAK_MODELS = re.compile(r"smollm2?-135m|bundled:", re.I)
"""The bundled 135M model, however it is named (spec, served name, hub id)."""


class JudgeError(TutorlmError):
    """The judge's endpoint failed past its retries, or the judge's inputs are unusable."""


@dataclass(frozen=True)
class Pair:
    """Two replies to the same question; ``reference`` is optional."""

    id: str
    question: str
    reply_a: str
    reply_b: str
    reference: str | None = None


# -- the prompt ------------------------------------------------------------------------


def judge_prompt_text() -> str:
    """The judge's prompt as recorded: system text, a blank line, the user template."""
    return f"{JUDGE_SYSTEM}\n\n{JUDGE_TEMPLATE}\n\n(with a reference:){REFERENCE_BLOCK}"


def judge_prompt_sha256() -> str:
    return hashlib.sha256(judge_prompt_text().encode("utf-8")).hexdigest()


def judge_messages(
    question: str, first: str, second: str, reference: str | None = None
) -> list[dict]:
    """The chat that asks which of ``first`` (shown as A) and ``second`` (B) is better."""
    block = REFERENCE_BLOCK.format(reference=reference.strip()) if reference else ""
    user = JUDGE_TEMPLATE.format(
        question=question.strip(), reference=block, first=first.strip(), second=second.strip()
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> tuple[str | None, str]:
    """``(verdict, reason)`` from a judge's output; verdict None when unreadable.

    The first ``Verdict:`` line must hold exactly one of A, B or tie (markdown marks,
    "Reply" and a final full stop aside): "A or B" or an echo of the format is not a
    verdict. The reason is the first ``Reason:`` line, else "".
    """
    reason_line = _REASON_LINE.search(text or "")
    reason = reason_line.group(1).strip(" \t*_`") if reason_line else ""
    line = _VERDICT_LINE.search(text or "")
    if not line:
        return None, reason
    value = re.sub(r"[*_`'\".!\s]+", " ", line.group(1)).strip().lower()
    value = value.removeprefix("reply ").strip()
    found = {"a": "A", "b": "B", "tie": "tie"}.get(value)
    return found, reason


# -- judging -----------------------------------------------------------------------------


def _combine(first_order: str | None, second_order: str | None) -> str:
    """The pair's verdict from both orders' verdicts, both in the pair's own labels."""
    if first_order is None or second_order is None:
        return "unparsed"
    if first_order == second_order:
        return first_order
    if {first_order, second_order} == {"A", "B"}:
        return "inconsistent"
    return "tie"  # a winner in one order, a tie in the other


_SWAP = {"A": "B", "B": "A", "tie": "tie", None: None}


def judge_pairs(pairs: Sequence[Pair], backend, config: JudgeConfig) -> list[dict]:
    """Ask the judge about every pair in both orders; one row per pair.

    Each row holds the pair, its ``verdict`` (:data:`OUTCOMES`) and ``score``
    (:data:`SCORES`, None when unparsed), and per order (``AB``: A shown first;
    ``BA``: B shown first) the judge's ``raw`` outputs (one per ask), its ``said``
    (the position it named), ``verdict`` in the pair's labels, and ``reason``.
    """
    asks = []  # (pair index, order, chat)
    for index, pair in enumerate(pairs):
        reference = pair.reference if config.use_reference else None
        asks.append(
            (index, "AB", judge_messages(pair.question, pair.reply_a, pair.reply_b, reference))
        )
        asks.append(
            (index, "BA", judge_messages(pair.question, pair.reply_b, pair.reply_a, reference))
        )
    raw: list[list[str]] = [[] for _ in asks]
    parsed: list[tuple[str | None, str]] = [(None, "") for _ in asks]
    pending = list(range(len(asks)))
    for attempt in range(config.parse_retries + 1):
        if not pending:
            break
        temperature = config.temperature if attempt == 0 else config.retry_temperature
        outputs = backend.complete([asks[i][2] for i in pending], temperature=temperature)
        for i, text in zip(pending, outputs, strict=True):
            raw[i].append(text)
            parsed[i] = parse_verdict(text)
        pending = [i for i in pending if parsed[i][0] is None]
    rows = []
    for index, pair in enumerate(pairs):
        orders = {}
        for i in (2 * index, 2 * index + 1):
            order = asks[i][1]
            said, reason = parsed[i]
            verdict = said if order == "AB" else _SWAP[said]
            orders[order] = {"said": said, "verdict": verdict, "reason": reason, "raw": raw[i]}
        verdict = _combine(orders["AB"]["verdict"], orders["BA"]["verdict"])
        rows.append(
            {
                "id": pair.id,
                "question": pair.question,
                "reference": pair.reference,
                "reply_a": pair.reply_a,
                "reply_b": pair.reply_b,
                "verdict": verdict,
                "score": SCORES.get(verdict),
                "orders": orders,
            }
        )
    return rows


def summarize(rows: Sequence[dict], *, resamples: int = 1000, seed: int = 0) -> dict:
    """Counts of each outcome, the win rate of A over B with its interval, and the
    shares that say how the judge behaved (inconsistent, unparsed, first position)."""
    counts = {outcome: sum(row["verdict"] == outcome for row in rows) for outcome in OUTCOMES}
    scores = [row["score"] for row in rows if row["score"] is not None]
    win = bootstrap_interval(scores, resamples=resamples, seed=seed)
    named = [o["said"] for row in rows for o in row["orders"].values() if o["said"] in ("A", "B")]
    asks = [o for row in rows for o in row["orders"].values()]
    return {
        "pairs": len(rows),
        "judged": len(scores),
        "counts": counts,
        "win_rate": win.to_dict(),
        "inconsistent_rate": counts["inconsistent"] / len(scores) if scores else None,
        "unparsed_rate": counts["unparsed"] / len(rows) if rows else None,
        "first_position_rate": sum(s == "A" for s in named) / len(named) if named else None,
        "reasks": sum(len(o["raw"]) - 1 for o in asks),
    }


def judge_agreement(
    rows: Sequence[dict],
    key_verdicts: Mapping[str, tuple[bool | None, bool | None]],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """How often the judge prefers the reply the key says is right.

    Only pairs where exactly one reply is key-graded right count: there the judge's
    pick can be checked. A pick of the right reply scores 1, of the wrong one 0, a
    tie or a position flip 0.5 (so a judge that always ties, or flips, sits at 0.5,
    the same as a coin); unparsed pairs are counted and left out.

    Args:
        rows: :func:`judge_pairs` rows.
        key_verdicts: by pair id, whether reply A and reply B are right (None: not graded).

    Returns:
        ``agreement`` (value, low, high, n), ``prefers_key`` / ``prefers_other`` /
        ``undecided`` / ``unparsed`` counts, and ``both_right`` / ``both_wrong``
        (pairs where the key cannot tell).
    """
    scores, counts = [], dict.fromkeys(("prefers_key", "prefers_other", "undecided", "unparsed"), 0)
    both_right = both_wrong = 0
    for row in rows:
        a_right, b_right = key_verdicts.get(row["id"], (None, None))
        if a_right is None or b_right is None:
            continue
        if a_right == b_right:
            both_right += a_right
            both_wrong += not a_right
            continue
        right = "A" if a_right else "B"
        if row["verdict"] == "unparsed":
            counts["unparsed"] += 1
            continue
        if row["verdict"] == right:
            counts["prefers_key"] += 1
            scores.append(1.0)
        elif row["verdict"] in ("A", "B"):
            counts["prefers_other"] += 1
            scores.append(0.0)
        else:
            counts["undecided"] += 1
            scores.append(0.5)
    agreement = bootstrap_interval(scores, resamples=resamples, seed=seed)
    return {
        "agreement": agreement.to_dict(),
        **counts,
        "both_right": both_right,
        "both_wrong": both_wrong,
    }


def judge_strength(model: str, agreements: Sequence[dict]) -> tuple[str, list[str]]:
    """``("weak" | "unmeasured" | "measured", reasons)``: what a reader may make of the
    judge's verdicts.

    Weak: the bundled 135M model, or an agreement interval with the keys that reaches
    down to 0.5 (no better than a coin). Unmeasured: no key-graded pair to check it on.
    """
    reasons = []
    if _WEAK_MODELS.search(model or ""):
        reasons.append("the bundled 135M model is too small to judge")
    measured = [a for a in agreements if a["agreement"]["n"]]
    for entry in measured:
        low = entry["agreement"]["low"]
        if low <= 0.5:
            reasons.append(
                f"its agreement with the keys{' on ' + entry['name'] if entry.get('name') else ''} "
                f"has an interval reaching {low:.3f} (0.5 is a coin)"
            )
    if reasons:
        return "weak", reasons
    if not measured:
        return "unmeasured", ["no key-graded pair where exactly one reply is right"]
    return "measured", []


def judge_record(backend, config: JudgeConfig) -> dict:
    """What the run must say about its judge: model, where, prompt and its hash, date."""
    from datetime import UTC, datetime

    settings = config.model_dump(exclude={"url", "model"})
    return {
        "model": backend.model,
        "endpoint": backend.where,
        "prompt_version": JUDGE_PROMPT_VERSION,
        "prompt": judge_prompt_text(),
        "prompt_sha256": judge_prompt_sha256(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings,
    }
