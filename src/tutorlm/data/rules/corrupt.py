"""Rejected answers made by corrupting correct ones (ProbLLMs, after Huang et al. 2023).

Three operations, two of which are drawn at random for each answer:

- ``remove``: drop content that is useful to the question (a key step);
- ``substitute``: make part of the answer inaccurate (a number, an operator);
- ``insert``: add content irrelevant to the question.

``method: model`` asks a local generator to do each operation with the system
prompts of ProbLLMs' appendix A, in bulk (:mod:`tutorlm.bulk`): every answer's first
operation in one call, then every answer's second, each answer keeping its own drawn
operations. A generated answer gets a token budget that follows the chosen answer's
length (:func:`corruption_budget`), and one that runs out of it is dropped
(``corruption_truncated``) rather than kept cut short: a rejected answer cut at a fixed
cap, beside a chosen answer that never is, would let length alone tell them apart.
``method: rules`` does them without a model, so
the offline demo can build pairs: it removes a step that holds a number or an
equation, perturbs one number (or swaps an operator or a comparative word), and
inserts a sentence from a fixed list of unrelated facts. When the example has a
known final result, ``ensure_wrong`` perturbs the rejected answer's last
statement of it, because removing a step or inserting a sentence may leave it right.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from tutorlm.bulk import Generator, Sampling, open_generator
from tutorlm.data.config import CorruptConfig
from tutorlm.data.examples import Example, Skip
from tutorlm.data.presets import CORRUPTION_PROMPTS
from tutorlm.data.rules.text import format_number, numbers_in, parse_number, split_steps

IRRELEVANT_SENTENCES = [
    "The Great Wall of China is visible from many mountain tops along its length.",
    "Many people prefer to drink tea in the afternoon.",
    "Octopuses have three hearts and blue blood.",
    "The first postage stamps were issued in Britain.",
    "Bamboo is one of the fastest-growing plants in the world.",
    "Chess was played in India more than a thousand years ago.",
    "Honey stored in a sealed jar can keep for a very long time.",
    "The violin usually has four strings tuned in fifths.",
    "Some deserts are cold, such as the one covering Antarctica.",
    "Mount Everest grows by a few millimetres every year.",
]
"""Sentences unrelated to any STEM question, for the rule-based ``insert``."""

_SWAPS = [
    (" + ", " - "),
    (" - ", " + "),
    (" × ", " ÷ "),
    (" * ", " / "),
    (" / ", " * "),
    (" < ", " > "),
    (" > ", " < "),
    ("increases", "decreases"),
    ("decreases", "increases"),
    ("more", "less"),
    ("less", "more"),
    ("larger", "smaller"),
    ("smaller", "larger"),
    ("higher", "lower"),
    ("lower", "higher"),
    ("always", "never"),
    ("before", "after"),
    ("positive", "negative"),
    ("true", "false"),
]


def _remove(text: str, rng: random.Random) -> str | None:
    steps = split_steps(text)
    if len(steps) < 2:
        return None
    body = list(range(len(steps) - 1)) or [0]  # keep the closing statement when possible
    key = [i for i in body if numbers_in(steps[i]) or "=" in steps[i]] or body
    drop = rng.choice(key)
    joiner = "\n" if "\n" in text.strip() else " "
    return joiner.join(step for i, step in enumerate(steps) if i != drop)


def _perturb_number(text: str, match: re.Match, rng: random.Random) -> str:
    value = parse_number(match.group())
    delta = rng.choice([d for d in range(-9, 10) if d != 0])
    new = format_number(value + delta, match.group())
    return text[: match.start()] + new + text[match.end() :]


def _substitute(text: str, rng: random.Random) -> str | None:
    matches = numbers_in(text)
    if matches:
        return _perturb_number(text, rng.choice(matches), rng)
    present = [(old, new) for old, new in _SWAPS if re.search(rf"\b{re.escape(old)}\b", text)]
    if not present:
        return None
    old, new = rng.choice(present)
    spots = [m.start() for m in re.finditer(rf"\b{re.escape(old)}\b", text)]
    at = rng.choice(spots)
    return text[:at] + new + text[at + len(old) :]


def _insert(text: str, rng: random.Random) -> str | None:
    steps = split_steps(text)
    where = rng.randrange(1, len(steps)) if len(steps) > 1 else len(steps)
    joiner = "\n" if "\n" in text.strip() else " "
    steps.insert(where, rng.choice(IRRELEVANT_SENTENCES))
    return joiner.join(steps)


RULE_OPS = {"remove": _remove, "substitute": _substitute, "insert": _insert}


def _last_mention(text: str, final: str) -> int:
    """Where ``final`` last occurs in ``text`` as a whole (not inside a longer number)."""
    hits = list(re.finditer(rf"(?<![\w.]){re.escape(final)}(?!\w)", text))
    return hits[-1].start() if hits else -1


def make_wrong(text: str, final: str, rng: random.Random) -> str:
    """``text`` with its last statement of ``final`` perturbed (if it states it)."""
    at = _last_mention(text, final)
    if at < 0:
        return text
    matches = numbers_in(final)
    if not matches:
        return text
    wrong = _perturb_number(final, rng.choice(matches), rng)
    return text[:at] + wrong + text[at + len(final) :]


BUDGET_RATIO = 2
BUDGET_EXTRA = 64


def corruption_budget(chosen_tokens: int, max_new_tokens: int) -> int:
    """Most tokens a generator may write for one corrupted answer.

    Twice the chosen answer plus 64 tokens (room for an inserted sentence), at most
    ``max_new_tokens``: removing, changing or inserting one piece never doubles an
    answer, so a generation that runs past this is rambling or looping, and is
    dropped. The budget follows the chosen answer, so long answers are not cut where
    short ones are not.
    """
    return min(max_new_tokens, BUDGET_RATIO * chosen_tokens + BUDGET_EXTRA)


def corruption_messages(op: str, question: str, answer: str) -> list[dict]:
    """The conversation that asks a generator for one operation (appendix A's prompt)."""
    return [
        {"role": "system", "content": CORRUPTION_PROMPTS[op]},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nCorrect answer:\n{answer}\n\n"
            "Reply with the corrupted answer only.",
        },
    ]


@dataclass
class _Attempt:
    """One answer on its way to a rejected one: the operations drawn, the text so far.

    The drawn operations run in the order remove, substitute, insert, so that the
    inserted filler is not itself removed or edited; an operation that changes nothing
    is replaced by a spare one.
    """

    text: str
    wanted: int
    queue: list[str]
    spare: list[str]
    applied: list[str] = field(default_factory=list)
    skip: str | None = None

    @property
    def pending(self) -> bool:
        return self.skip is None and bool(self.queue) and len(self.applied) < self.wanted

    def take(self) -> str:
        return self.queue.pop(0)

    def offer(self, op: str, new: str | None) -> None:
        if new is not None and new.strip() != self.text.strip():
            self.text, self.applied = new, [*self.applied, op]
        elif self.spare:
            self.queue.append(self.spare.pop(0))


class Corruptor:
    """Applies a :class:`CorruptConfig` to question/answer examples.

    The generator of ``method: model`` is opened on first use only, through
    ``generators`` (a model spec -> :class:`tutorlm.bulk.Generator`; the data build
    shares one per model, on the recipe's device and engine), else on this machine's
    default device with the transformers backend.
    """

    def __init__(self, rule: CorruptConfig, default_model: str, *, generators=None):
        self.rule = rule
        self.model_spec = rule.generator or default_model
        self.generators = generators
        self._generator: Generator | None = None
        self._prepared: dict[str, _Attempt] = {}

    def generator(self) -> Generator:
        if self._generator is None:
            opener = self.generators or open_generator
            self._generator = opener(self.model_spec)
        return self._generator

    def _plan(self, answer: str, rng: random.Random) -> _Attempt:
        wanted = rng.sample(self.rule.ops, min(self.rule.n_ops, len(self.rule.ops)))
        wanted.sort(key=list(RULE_OPS).index)  # insert last: later edits keep the filler
        spare = [op for op in self.rule.ops if op not in wanted]
        return _Attempt(answer, len(wanted), list(wanted), spare)

    def prepare(self, examples: list[Example], rng: random.Random) -> None:
        """Corrupt the answers of ``examples`` with the generator, in bulk.

        Each answer's operations are drawn first, in the examples' order; then one
        generation call runs every answer's next operation, until each has its
        operations or none is left to try (at most three calls). The results wait for
        :meth:`corrupt`; nothing happens for ``method: rules``.
        """
        todo = [e for e in examples if e.uid not in self._prepared]
        if self.rule.method != "model" or not todo:
            return
        attempts = [self._plan(example.answer, rng) for example in todo]
        generator = self.generator()
        budgets = [
            corruption_budget(generator.count_tokens(e.answer), self.rule.max_new_tokens)
            for e in todo
        ]
        step = 0
        while live := [i for i, attempt in enumerate(attempts) if attempt.pending]:
            step += 1
            ops = [attempts[i].take() for i in live]
            prompts = [
                corruption_messages(op, todo[i].question, attempts[i].text)
                for i, op in zip(live, ops, strict=True)
            ]
            sampling = Sampling(
                max_new_tokens=self.rule.max_new_tokens,
                temperature=self.rule.temperature,
                seed=rng.randrange(2**31),  # sampling, if any, follows the build's seed
            )
            outputs = generator.generate(
                prompts,
                sampling,
                max_new_tokens=[budgets[i] for i in live],
                desc=f"corrupting: operation {step}",
            )
            for i, op, out in zip(live, ops, outputs, strict=True):
                attempt = attempts[i]
                if out.finish_reason == "length" and self.rule.over_budget == "drop":
                    attempt.skip = "corruption_truncated"
                    continue
                text = out.text.strip()
                attempt.offer(op, text if text and text != attempt.text.strip() else None)
        for example, attempt in zip(todo, attempts, strict=True):
            self._prepared[example.uid] = attempt

    def corrupt(self, example: Example, final: str | None, rng: random.Random):
        """``(rejected text, ops applied)``; ``Skip("corruption_failed")`` if no op applied,
        ``Skip("corruption_truncated")`` if a generation ran out of its budget.

        ``method: model`` takes the answer :meth:`prepare` made (preparing this one
        example alone if it was not).
        """
        if self.rule.method == "model":
            self.prepare([example], rng)
            attempt = self._prepared.pop(example.uid)
        else:
            attempt = self._plan(example.answer, rng)
            while attempt.pending:
                op = attempt.take()
                attempt.offer(op, RULE_OPS[op](attempt.text, rng))
        if attempt.skip:
            raise Skip(attempt.skip)
        if not attempt.applied:
            raise Skip("corruption_failed")
        text = attempt.text
        if self.rule.ensure_wrong and final:
            text = make_wrong(text, final, rng)
        if text.strip() == example.answer.strip():
            raise Skip("corruption_failed")
        return text, attempt.applied
