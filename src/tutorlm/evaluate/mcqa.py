"""Multiple-choice question answering, scored as lm-evaluation-harness scores MMLU.

The plain prompt is lm-evaluation-harness's MMLU prompt, character for character,
so that scores compare with published ones::

    The following are multiple choice questions (with answers) about college physics.

    <question, stripped>
    A. <choice 0>
    B. <choice 1>
    C. <choice 2>
    D. <choice 3>
    Answer:

The first line (and the blank line after it) appears only when the record has a
``subject``; underscores in the subject become spaces. k-shot prompts put k solved
examples (same block followed by " <letter>") between the subject line and the
question, separated by blank lines.

Two scoring methods:

- ``letter`` (lm-evaluation-harness ``mmlu``): the log-probability of " A", " B", ...
  at the answer position. The letter comes *after* "Answer:" with a leading space
  because that is the token the model would write there (" A" and "A" are different
  tokens). One forward pass per question scores every letter.
- ``choice`` (lm-evaluation-harness ``mmlu_continuation``): the prompt is
  "Question: <question>\\nAnswer:" without the options, and each choice text is
  scored in full as the continuation " <choice>". ``acc`` takes the choice of
  highest total log-probability; ``acc_norm`` divides each by the choice's length
  in characters first, so long choices are not penalised for having more tokens.

With ``chat=True`` the prompt (few-shot examples as earlier user/assistant turns) is
rendered through the model's chat template with the assistant turn opened, and the
continuations lose their leading space ("A", not " A"): an assistant turn starts
on a fresh line, where a chat model writes the letter alone.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tutorlm.evaluate.scorer import Scorer, ScorerError
from tutorlm.evaluate.stats import Interval, bootstrap_interval
from tutorlm.prompts import LETTERS, mcqa_block, question_only_block

METHODS = ("letter", "choice")


def subject_line(subject: str | None) -> str:
    """lm-evaluation-harness's MMLU description line, or "" without a subject."""
    if not subject:
        return ""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def question_block(record, method: str = "letter") -> str:
    """The question as the model sees it, ending in "Answer:" (no trailing space)."""
    if method == "choice":
        return question_only_block(record.question)
    if len(record.choices) > len(LETTERS):
        raise ScorerError(f"record {record.id}: more than {len(LETTERS)} choices")
    return mcqa_block(record.question, record.choices)


def answer_text(record, index: int, method: str = "letter") -> str:
    """The continuation for choice ``index``, without the delimiter before it."""
    return LETTERS[index] if method == "letter" else record.choices[index]


def render_prompt(record, shots: Sequence = (), *, method: str = "letter") -> str:
    """The plain (no chat template) prompt of a question with its few-shot examples."""
    solved = [f"{question_block(s, method)} {answer_text(s, s.answer, method)}" for s in shots]
    return (
        subject_line(record.subject)
        + "".join(f"{text}\n\n" for text in solved)
        + question_block(record, method)
    )


def render_chat_prompt(record, tokenizer, shots: Sequence = (), *, method: str = "letter") -> str:
    """The prompt as a conversation through the tokenizer's chat template.

    Each few-shot example is a user turn (its question) and an assistant turn (its
    answer); the subject line opens the first user turn. The assistant turn of the
    question itself is left open for the answer.
    """
    messages = []
    for shot in shots:
        messages.append({"role": "user", "content": question_block(shot, method)})
        messages.append({"role": "assistant", "content": answer_text(shot, shot.answer, method)})
    messages.append({"role": "user", "content": question_block(record, method)})
    messages[0]["content"] = subject_line(record.subject) + messages[0]["content"]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ScorerError("chat=True needs a tokenizer with a chat template; this one has none")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def choose_shots(record, pool: Sequence, k: int, *, seed: int = 0) -> list:
    """k solved examples for ``record``: same subject first, never the record itself.

    The pool is shuffled with ``seed`` once per question id, so the choice is
    reproducible and does not depend on the order questions are scored in.
    """
    if k <= 0:
        return []
    others = [r for r in pool if r.id != record.id and r.question != record.question]
    same = [r for r in others if record.subject and r.subject == record.subject]
    rest = [r for r in others if not (record.subject and r.subject == record.subject)]
    rng = random.Random(f"{seed}:{record.id}")
    rng.shuffle(same)
    rng.shuffle(rest)
    picked = (same + rest)[:k]
    if len(picked) < k:
        raise ScorerError(f"{k}-shot needs {k} other questions; the pool has {len(others)}")
    return picked


@dataclass
class MCQAPrediction:
    """One question's outcome; ``logprobs`` has one entry per choice."""

    id: str
    answer: int
    predicted: int
    logprobs: list[float]
    subject: str | None = None
    predicted_norm: int | None = None

    def to_dict(self) -> dict:
        data = {
            "id": self.id,
            "subject": self.subject,
            "answer": self.answer,
            "predicted": self.predicted,
            "correct": self.predicted == self.answer,
            "logprobs": [round(value, 6) for value in self.logprobs],
        }
        if self.predicted_norm is not None:
            data["predicted_norm"] = self.predicted_norm
        return data


@dataclass
class MCQAResult:
    """Accuracy with a bootstrap 95 % interval, per subject, and every prediction."""

    method: str
    shots: int
    chat: bool
    accuracy: Interval
    accuracy_norm: Interval | None
    per_subject: dict[str, Interval]
    predictions: list[MCQAPrediction]
    predicted_counts: dict[str, int]
    gold_counts: dict[str, int]
    seconds: float = 0.0
    prompt_format: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.predictions)

    @property
    def questions_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        """Everything but the predictions (written separately as JSONL)."""
        return {
            "kind": "mcqa",
            "method": self.method,
            "shots": self.shots,
            "chat": self.chat,
            "n": self.n,
            "accuracy": self.accuracy.to_dict(),
            "accuracy_norm": self.accuracy_norm.to_dict() if self.accuracy_norm else None,
            "per_subject": {
                name: value.to_dict() for name, value in sorted(self.per_subject.items())
            },
            "predicted_counts": self.predicted_counts,
            "gold_counts": self.gold_counts,
            "seconds": round(self.seconds, 3),
            "questions_per_second": round(self.questions_per_second, 3),
            "prompt_format": self.prompt_format,
            **self.extra,
        }


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # first of equal maxima


def _top_two_gap(values: Sequence[float]) -> float:
    ordered = sorted(values, reverse=True)
    return ordered[0] - ordered[1] if len(ordered) > 1 else float("inf")


def close_calls(
    records: Sequence, scores: list[list[float]], method: str, margin: float
) -> list[int]:
    """Questions whose two best choices are within ``margin`` nats (per character, times
    the mean choice length, for ``acc_norm``): where reduced precision could flip the answer."""
    close = []
    for index, (record, logprobs) in enumerate(zip(records, scores, strict=True)):
        gap = _top_two_gap(logprobs)
        if method == "choice":
            lengths = [max(len(choice), 1) for choice in record.choices]
            normed = [lp / n for lp, n in zip(logprobs, lengths, strict=True)]
            gap = min(gap, _top_two_gap(normed) * sum(lengths) / len(lengths))
        if gap < margin:
            close.append(index)
    return close


def evaluate_mcqa(
    scorer: Scorer,
    records: Sequence,
    *,
    method: str = "letter",
    shots: int = 0,
    fewshot_pool: Sequence | None = None,
    chat: bool = False,
    seed: int = 0,
    resamples: int = 1000,
    recheck=None,
    recheck_margin: float = 0.5,
) -> MCQAResult:
    """Score MCQA records (``tutorlm.data.formats.MCQARecord``) with one scorer.

    Args:
        scorer: the model to evaluate.
        records: questions with ``choices`` and the gold ``answer`` index.
        method: ``letter`` (letters at the answer position) or ``choice``
            (full-choice log-likelihood, with ``acc_norm``).
        shots: number of solved examples before each question.
        fewshot_pool: where examples come from (same subject first); default the
            evaluated records themselves, never the question being asked.
        chat: render through the tokenizer's chat template.
        seed: for the few-shot draw and the bootstrap.
        resamples: bootstrap resamples for the 95 % intervals (0: none).
        recheck: a float32 scorer of the same model (or a function returning one,
            called only if needed) that re-scores the close calls of a bf16
            ``scorer``: questions whose two best choices are within
            ``recheck_margin`` nats. bf16 moves the gap between two letters by up to
            about 0.25 nats on the bundled model, so with the default margin the
            predictions are those of a float32 run while most questions run in bf16.
    """
    if method not in METHODS:
        raise ScorerError(f"method {method!r} is not one of {', '.join(METHODS)}")
    pool = list(fewshot_pool) if fewshot_pool is not None else list(records)
    delimiter = "" if chat else " "
    per_question: list[list[tuple[str, str]]] = []
    for record in records:
        examples = choose_shots(record, pool, shots, seed=seed)
        if chat:
            prompt = render_chat_prompt(record, scorer.tokenizer, examples, method=method)
        else:
            prompt = render_prompt(record, examples, method=method)
        per_question.append(
            [
                (prompt, delimiter + answer_text(record, c, method))
                for c in range(len(record.choices))
            ]
        )
    started = time.perf_counter()
    unit = "q" if method == "letter" else "choice"  # letters: one forward pass per question
    scores = _score(scorer, per_question, f"mcqa {method}", unit, chat)
    rechecked = 0
    if recheck is not None:
        close = close_calls(records, scores, method, recheck_margin)
        if close:
            checker = recheck if isinstance(recheck, Scorer) else recheck()
            asked = [per_question[i] for i in close]
            fresh = _score(checker, asked, "recheck fp32", unit, chat)
            for index, logprobs in zip(close, fresh, strict=True):
                scores[index] = logprobs
            rechecked = len(close)
    seconds = time.perf_counter() - started
    predictions = []
    for record, logprobs in zip(records, scores, strict=True):
        predicted_norm = None
        if method == "choice":
            lengths = [max(len(choice), 1) for choice in record.choices]
            predicted_norm = _argmax([lp / n for lp, n in zip(logprobs, lengths, strict=True)])
        predictions.append(
            MCQAPrediction(
                record.id,
                record.answer,
                _argmax(logprobs),
                logprobs,
                record.subject,
                predicted_norm,
            )
        )
    result = _summarise(predictions, method, shots, chat, seconds, seed, resamples)
    result.extra["rechecked"] = rechecked
    return result


def _score(
    scorer: Scorer, per_question: list[list[tuple[str, str]]], desc: str, unit: str, chat: bool
) -> list[list[float]]:
    flat = [request for requests in per_question for request in requests]
    # a chat prompt's final newline is the assistant header's, not the answer's
    results = iter(scorer.loglikelihood(flat, desc=desc, unit=unit, move_whitespace=not chat))
    return [[next(results).logprob for _ in requests] for requests in per_question]


def _summarise(predictions, method, shots, chat, seconds, seed, resamples) -> MCQAResult:
    correct = [float(p.predicted == p.answer) for p in predictions]
    accuracy = bootstrap_interval(correct, resamples=resamples, seed=seed)
    accuracy_norm = None
    if method == "choice":
        normed = [float(p.predicted_norm == p.answer) for p in predictions]
        accuracy_norm = bootstrap_interval(normed, resamples=resamples, seed=seed)
    by_subject: dict[str, list[float]] = defaultdict(list)
    for prediction, hit in zip(predictions, correct, strict=True):
        if prediction.subject:
            by_subject[prediction.subject].append(hit)
    per_subject = {
        name: bootstrap_interval(hits, resamples=resamples, seed=seed)
        for name, hits in by_subject.items()
    }
    predicted = Counter(LETTERS[p.predicted] for p in predictions)
    gold = Counter(LETTERS[p.answer] for p in predictions)
    layout = (
        "lm-eval mmlu (letters after 'Answer:')"
        if method == "letter"
        else "lm-eval mmlu_continuation"
    )
    return MCQAResult(
        method=method,
        shots=shots,
        chat=chat,
        accuracy=accuracy,
        accuracy_norm=accuracy_norm,
        per_subject=per_subject,
        predictions=predictions,
        predicted_counts=dict(sorted(predicted.items())),
        gold_counts=dict(sorted(gold.items())),
        seconds=seconds,
        prompt_format=layout + (", chat template" if chat else "") + f", {shots}-shot",
    )
