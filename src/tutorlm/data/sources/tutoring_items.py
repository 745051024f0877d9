"""What the tutoring rows and the tutor evaluation are made of: the notes questions and
their split, worked problems, hints and explanations, and the held-out eval items.

``tutorlm.data.sources.tutoring`` turns them into training rows in the served tutor's
prompt; :func:`tutor_eval_items` hands the held-out part to ``tutorlm eval``'s tutor tasks.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tutorlm.data.examples import DataError, json_lines
from tutorlm.data.sources.rg_worked import worked_solution
from tutorlm.data.tutoring_config import TutoringSource

HINT_OPENERS = ("Here is a first step:", "Start like this:", "Try this first step:")
HINT_PROMPTS = (
    "What do you get if you carry on from there?",
    "Can you take the next step yourself?",
    "What would you do next?",
)
GUIDING_QUESTIONS = {
    "basic_arithmetic": "Which operation comes first by the order of operations, and what "
    "does it give?",
    "chain_sum": "What do the first two numbers give together?",
    "simple_equations": "What can you do to both sides to get the unknown term on its own?",
    "gcd": "What is the remainder when you divide the larger number by the smaller one?",
    "lcm": "What is the greatest common divisor of the numbers, and how does it help?",
    "prime_factorization": "What is the smallest prime that divides the number?",
    "fraction_simplification": "Which number divides both the numerator and the denominator?",
    "simple_geometry": "What do the interior angles of a polygon with this many sides add up to?",
    "gsm_symbolic": "Which quantity can you work out first from the numbers given?",
    "champ": "Which smaller case or quantity could you work out first?",
}
"""Hints that give no number away: used when a problem's first step would."""
_SENTENCE_END = re.compile(r"([.!?])(?=\s+[A-Z(]|\s*$)")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def normalize_answer(text: str) -> str:
    """Lower case, one space between words, the Unicode minus as "-": how answer strings
    are compared (a canonical answer in a reply, a final answer in a hint)."""
    return " ".join(text.replace("\u2212", "-").lower().split())


def _value(number: str) -> float | None:
    try:
        if "/" in number:
            top, bottom = number.replace(",", "").split("/")
            return int(top) / int(bottom)
        return float(number.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def gives_answer(text: str, final: str) -> bool:
    """Whether ``text`` states the final answer ``final``.

    A numeric final (``12``, ``-3.5``, ``5/14``) matches any number in the text of equal
    value (relative tolerance 1e-6); any other final matches as a string, spaces
    ignored, as whole words ("No" is not in "not"), and so does each of its
    comma-separated parts ("5/14, or about 35.7%").
    """
    target = _value(final.strip()) if _NUMBER.fullmatch(final.strip()) else None
    if target is not None:
        values = (_value(found) for found in _NUMBER.findall(text.replace("\u2212", "-")))
        return any(
            v is not None and abs(v - target) <= 1e-6 * max(1.0, abs(target)) for v in values
        )
    text = normalize_answer(text)
    for form in {final, *final.split(",")}:
        letters = normalize_answer(form).replace(" ", "")
        if letters:  # the form's characters in order, any spaces between, whole words
            pattern = r"\s*".join(map(re.escape, letters))
            if re.search(rf"(?<!\w){pattern}(?!\w)", text):
                return True
    return False


def notes_split(question_id: str, test_share: float) -> str:
    """``"test"`` for a held-out notes question, else ``"train"``: a hash of its id, so the
    split is the same on every machine and a new question never moves an old one."""
    digest = hashlib.sha256(f"tutorlm-notes-split\0{question_id}".encode()).hexdigest()
    return "test" if int(digest[:8], 16) / 0x1_0000_0000 < test_share else "train"


def assets_root(notes: str | None) -> Path:
    """The folder holding ``notes/`` and ``notes_questions.jsonl`` (bundled by default)."""
    return Path(notes) if notes else Path(str(resources.files("tutorlm").joinpath("assets")))


def load_questions(root: Path) -> dict[str, list[dict]]:
    """The ``qa`` and ``unanswerable`` lines of ``notes_questions.jsonl``, by kind.

    Raises:
        DataError: a missing file, bad JSON or a missing field, named by file and line.
    """
    path = root / "notes_questions.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (notes questions)")
    needed = {
        "qa": ("id", "file", "section", "question", "answer", "canonical", "variants"),
        "unanswerable": ("id", "question"),
    }
    found: dict[str, list[dict]] = {"qa": [], "unanswerable": []}
    for number, row in json_lines(path):
        kind = row.get("kind")
        if kind not in needed:
            continue
        missing = [key for key in needed[kind] if key not in row]
        if missing:
            raise DataError(f"{path}:{number}: field '{missing[0]}' is missing")
        found[kind].append(row)
    return found


def split_questions(config: TutoringSource, part: str) -> dict[str, list[dict]]:
    """The ``qa`` and ``unanswerable`` questions of one part (``train`` or ``test``)."""
    questions = load_questions(assets_root(config.notes))
    shares = {"qa": config.test_share, "unanswerable": config.abstain_test_share}
    return {
        kind: [row for row in rows if notes_split(row["id"], shares[kind]) == part]
        for kind, rows in questions.items()
    }


def cite(answer: str, number: int) -> str:
    """``answer`` with ``[number]`` before the end of each sentence."""
    return _SENTENCE_END.sub(lambda m: f" [{number}]{m.group(1)}", answer.strip())


@dataclass
class Problem:
    """A problem with a worked solution: its steps (one per line) and its final answer."""

    uid: str
    question: str
    steps: list[str]
    final: str
    kind: str
    """The generator's name, or ``champ``."""


def seed_of(*parts) -> int:
    return int(hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def worked_problems(config: TutoringSource, seed: int, part: str) -> list[Problem]:
    """Worked problems for the hint and explain rows of ``part`` (``train`` or ``test``).

    reasoning-gym problems are drawn with a seed of their own per part, and held-out
    ones that repeat a training question are left out; CHAMP problems are split by a
    hash of their id, as the notes questions are.
    """
    problems = [p for p in _rg_problems(config, seed, part)]
    if part == "test":
        seen = {p.question for p in _rg_problems(config, seed, "train")}
        problems = [p for p in problems if p.question not in seen]
    return problems + _champ_problems(config, part)


def _rg_problems(config: TutoringSource, seed: int, part: str) -> list[Problem]:
    if not config.generators or not config.per_generator:
        return []
    import reasoning_gym

    problems = []
    for generator in config.generators:
        data = reasoning_gym.create_dataset(
            generator,
            size=config.per_generator,
            seed=seed_of(seed, part, generator),
            **config.options.get(generator, {}),
        )
        for index in range(len(data)):
            item = data[index]
            worked = worked_solution(generator, item)
            gold = str(item["answer"]).strip()
            if worked is None or data.score_answer(answer=worked[1], entry=item) != 1.0:
                continue
            lines = [line.strip() for line in worked[0].splitlines() if line.strip()]
            uid = f"{generator}-{part}-{index}"
            problems.append(Problem(uid, item["question"].strip(), lines, gold, generator))
    return problems


def _champ_problems(config: TutoringSource, part: str) -> list[Problem]:
    if not config.champ:
        return []
    from tutorlm.data.sources.bundled import _champ_problems as champ

    chosen = []
    for pid, problem in sorted(champ().items()):
        if notes_split(f"champ-{pid}", config.test_share) != part:
            continue
        steps = [step.text.strip() for step in problem.solution.steps if step.text.strip()]
        chosen.append(Problem(pid, problem.text.strip(), steps, problem.answer.strip(), "champ"))
    return chosen[: config.champ]


def hint_reply(problem: Problem, rng: random.Random) -> str | None:
    """A first step of the solution with a prompt to go on, or the kind's guiding question
    when that step would give the answer away; None when even that would."""
    steps = [s for s in problem.steps if not s.endswith(":")]
    if steps and (steps[0].startswith("Start from") or steps[0] in problem.question):
        steps = steps[1:]
    guide = GUIDING_QUESTIONS.get(problem.kind, GUIDING_QUESTIONS["champ"])
    if steps and len(steps) > 1 and not gives_answer(steps[0], problem.final):
        reply = f"{rng.choice(HINT_OPENERS)} {steps[0]}\n{rng.choice(HINT_PROMPTS)}"
    else:
        reply = guide
    return None if gives_answer(reply, problem.final) else reply


def explain_reply(problem: Problem) -> str:
    """The worked steps, one per line, ending "The answer is X."."""
    return "\n".join([*problem.steps, f"The answer is {problem.final}."])


def tutor_eval_items(config: TutoringSource | None = None, *, seed: int = 0) -> list[dict]:
    """The held-out tutoring items, in the format the tutor evaluation reads.

    Each item is ``{"id", "task", "mode", "question", "answer", "variants", "file",
    "section", "final"}``; ``task`` is ``grounded`` (held-out notes questions: ``answer``
    is the canonical answer), ``abstain`` (held-out unanswerable questions: ``answer``
    ""), ``hint`` (hint mode), ``explain`` (tutor mode) or ``free`` (the explain
    questions, no choices given, to measure letter answers). Pass the training source's
    config and seed, so that no item was trained on.
    """
    config = config or TutoringSource(type="tutoring", name="tutoring")
    seed = config.seed if config.seed is not None else seed
    held_out = split_questions(config, "test")
    items = [
        _item(f"grounded-{row['id']}", "grounded", "tutor", row["question"],
              row["canonical"], row["variants"], row["file"], row["section"], None)
        for row in held_out["qa"]
    ]  # fmt: skip
    items += [
        _item(f"abstain-{row['id']}", "abstain", "tutor", row["question"], "", [], None, None, None)
        for row in held_out["unanswerable"]
    ]
    for problem in worked_problems(config, seed, "test"):
        for task, mode in (("hint", "hint"), ("explain", "tutor"), ("free", "tutor")):
            items.append(
                _item(f"{task}-{problem.uid}", task, mode, problem.question, problem.final,
                      [], None, None, problem.final)
            )  # fmt: skip
    return items


def _item(uid, task, mode, question, answer, variants, file, section, final) -> dict:
    return {
        "id": uid,
        "task": task,
        "mode": mode,
        "question": question,
        "answer": answer,
        "variants": list(variants),
        "file": file,
        "section": section,
        "final": final,
    }
