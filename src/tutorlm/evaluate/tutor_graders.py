"""The graders of the tutor tasks: one pure function per verdict, each ``(bool, why)``.

A grader reads one reply (and what the item knows: canonical answer, variants, the
question, the notes in the prompt) and says whether the reply counts, with a short
reason a person can check against the reply (``docs/evaluate.md``, "Tutor tasks", has
the rules with replies that pass and fail). The rules are deliberately plain string and
number rules, not a judge model: a 135M tutor's replies are short, and a rule that
can be read is a rule whose mistakes can be audited in the predictions files.

Shared rules:

- **Text** is compared after :func:`normalize`: Unicode NFKC, case folded, minus
  signs and curly quotes made ASCII, LaTeX ``$`` and commands unwrapped, thousands
  separators dropped, punctuation other than maths (``+ - * / = ^ < > % .``, and
  ``:`` between digits, a ratio) made a space. An answer matches where its normalised
  form appears on word boundaries, spaces and ``*`` ignored inside it ("F = m a" and
  "f=m*a" both contain "F = ma", "F = mass" does not).
- **Numbers** (:func:`numbers_in`): ``9.81``, ``-3``, ``1/2`` (no spaces: a
  fraction, so "240/20" reads as 12), ``50%`` (read as 50 and as 0.5), ``3e8``;
  citations ``[n]``, "Step n" and list markers are not numbers of the answer. Two
  integers match only when equal (240 is not 241); otherwise within a relative
  tolerance of ``REL_TOL`` ("about 9.8" matches 9.81, 10 does not).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

REL_TOL = 1e-2
"""Relative tolerance of a numeric match where either number is not an integer."""

_SUPERSCRIPT = re.compile("⁻?[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_CHARS = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2013": "-",
        "\u2014": "-",
        "\u2010": "-",
        "\u2011": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "×": "*",
        "·": "*",
        "⋅": "*",
    }
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}|\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_MULTIPLY = re.compile(r"\\(?:times|cdot)\b")
_LATEX_SPACE = re.compile(r"\\[,;:! ]|\\q?quad\b")
_LATEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
_LATEX_WRAPPERS = ("text", "mathrm", "mathbf", "mathit", "operatorname", "left", "right")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_THIN_THOUSANDS = re.compile(r"(?<=\d)[\u2009\u202f\u00a0](?=\d{3}(?!\d))")
_RATIO = re.compile(r"(?<=\d)\s*:\s*(?=\d)")
_NOT_KEPT = re.compile(r"[^\w\s+\-*/=^<>%.:]|_|(?<!\d):|:(?!\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")

_CITATION = re.compile(r"\[(\s*\d+(?:\s*(?:,|;|-|–|and)\s*\d+)*\s*)\]")
"""The citation syntax ``tutorlm.rag.prompt.cited_numbers`` reads: ``[2]``, ``[1, 3]``,
``[1][2]``, ``[1-3]``, ``[1 and 2]`` (a test keeps the two readers in agreement)."""
_MAX_RANGE = 100
"""A range ``[a-b]`` expands to at most this many numbers ("[1-9999]" is one bad citation)."""
_NOT_ANSWER_NUMBERS = re.compile(r"(?im)\bstep\s+\d+\b|^\s*(?:[-*]\s*)?\d{1,2}[.)]\s+(?=[^\W\d_])")
_NUMBER = re.compile(
    r"(?<![\w.^])(?<!\^-)(?P<sign>-)?(?P<int>\d+)(?P<frac>\.\d+)?(?:/(?P<den>\d+)(?!\.\d))?"
    r"(?P<exp>e[-+]?\d+)?(?P<pct>\s*(?:%|percent\b))?",
    re.IGNORECASE,
)


def _unlatex(text: str) -> str:
    """LaTeX written by a model or a note, as plain text: ``$\\frac{1}{2} m v^2$`` ->
    ``1/2 m v^2``; ``\\text{m/s}`` -> ``m/s``; ``\\pi`` -> ``pi``."""
    text = text.replace("$", " ").replace("\\(", " ").replace("\\)", " ")
    text = text.replace("\\[", " ").replace("\\]", " ")
    text = _LATEX_FRAC.sub(lambda m: f"{m[1] or m[3]}/{m[2] or m[4]}", text)
    text = _LATEX_MULTIPLY.sub("*", text)
    text = _LATEX_SPACE.sub(" ", text)
    text = _LATEX_COMMAND.sub(lambda m: "" if m[1] in _LATEX_WRAPPERS else m[1], text)
    return text.replace("{", "").replace("}", "")


def _plain(text: str) -> str:
    """Case kept, characters unified: what numbers and text are both read from."""
    text = _SUPERSCRIPT.sub(lambda m: "^" + m[0].translate(_SUPERSCRIPT_DIGITS), text)
    text = _THIN_THOUSANDS.sub("", text).translate(_CHARS)
    return _THOUSANDS.sub("", _unlatex(unicodedata.normalize("NFKC", text)))


def normalize(text: str) -> str:
    """Text as answers are compared: ``"F = m·a."`` -> ``"f = m*a"``, ``"1,000 N"`` ->
    ``"1000 n"``, ``"Newton’s"`` -> ``"newton s"`` (see the module docstring)."""
    text = _NOT_KEPT.sub(" ", _RATIO.sub(":", _plain(text).casefold()))  # "3 : 1" is "3:1"
    return " ".join(_LONE_PERIOD.sub(" ", text).split())


def _answer_pattern(answer: str) -> re.Pattern | None:
    """A pattern finding ``answer`` in normalised text: its characters in order, spaces
    and ``*`` optional between them, not inside a longer word or number."""
    compact = normalize(answer).replace(" ", "").replace("*", "")
    if not compact:
        return None
    body = r"[\s*]*".join(re.escape(char) for char in compact)
    return re.compile(rf"(?<![\w.]){body}(?![\w]|\.\d)")


@dataclass(frozen=True)
class Number:
    """A number as written: its readings (``50%``: 50 and 0.5) and where it stands."""

    text: str
    values: tuple[float, ...]
    integer: bool
    start: int
    end: int


def numbers_in(text: str) -> list[Number]:
    """The numbers of a text, after :func:`_plain` (``1,234`` is one number). A base or
    an exponent of a power (``10^8``, ``m/s^2``) is not read: its value is not what is
    written."""
    found = []
    for match in _NUMBER.finditer(text):
        if text[match.end() :].lstrip().startswith("^"):
            continue  # a power ("10^8"), not a number read as written
        sign = -1.0 if match["sign"] else 1.0
        value = sign * float(match["int"] + (match["frac"] or "") + (match["exp"] or ""))
        integer = not (match["frac"] or match["exp"] or match["den"] or match["pct"])
        if match["den"]:
            if int(match["den"]) == 0:
                continue
            value /= float(match["den"])
        values = (value, value / 100) if match["pct"] else (value,)
        found.append(Number(match[0].strip(), values, integer, match.start(), match.end()))
    return found


def same_number(a: Number, b: Number, rel_tol: float = REL_TOL) -> bool:
    """Two integers: equal; else equal within ``rel_tol`` (any reading of each)."""
    if a.integer and b.integer:
        return a.values[0] == b.values[0]
    return any(math.isclose(x, y, rel_tol=rel_tol) for x in a.values for y in b.values)


_UNIT = r"(?:[^\W\d_]|[\s/*°%()]|\^-?\d+)*"
_NUMERIC_ANSWER = re.compile(rf"^\s*(?:[^\W\d_]\w*\s*(?:=|≈)\s*)?(?P<number>\S+?)\s*{_UNIT}$")


def answer_number(answer: str) -> Number | None:
    """The number an answer is, if it is one: ``"9.81"``, ``"9.81 m/s^2"``, ``"x = 12"``,
    ``"1/2"``, ``"50%"``; None for ``"F = ma"`` or ``"3 and 4"``."""
    plain = _plain(answer)
    match = _NUMERIC_ANSWER.match(plain)
    if not match:
        return None
    numbers = numbers_in(plain)
    if len(numbers) != 1 or numbers[0].start != match.start("number"):
        return None
    return numbers[0]


def answer_numbers(text: str) -> list[Number]:
    """Numbers a reply states, leaving out citations, "Step n" and list markers."""
    return numbers_in(_NOT_ANSWER_NUMBERS.sub(" ", _CITATION.sub(" ", _plain(text))))


def _shown(values: Sequence) -> str:
    return ", ".join(f"'{v}'" for v in values)


def find_answer(reply: str, candidates: Sequence[str]) -> tuple[str, str] | None:
    """The first candidate answer the reply contains, and how: ``(candidate, how)``.

    A candidate that is a number (:func:`answer_number`) matches any number of the
    reply; any other matches its normalised text (module docstring)."""
    numbers = answer_numbers(reply)
    text = normalize(_CITATION.sub(" ", reply))
    for candidate in candidates:
        target = answer_number(candidate)
        if target is not None:
            hit = next((n for n in numbers if same_number(n, target)), None)
            if hit is not None:
                return candidate, f"number {hit.text!r} matches {target.text!r}"
            continue
        pattern = _answer_pattern(candidate)
        if pattern is not None and pattern.search(text):
            return candidate, "text matches"
    return None


def grounded_answer(reply: str, answer: str, variants: Sequence[str] = ()) -> tuple[bool, str]:
    """Grounded accuracy: the reply contains the canonical answer or a variant."""
    candidates = [answer, *variants]
    found = find_answer(reply, candidates)
    if found is None:
        return False, f"contains none of {_shown(candidates)}"
    candidate, how = found
    return True, f"contains {candidate!r} ({how})"


_COPIED_HEADER = re.compile(r"^\s*\[\s*\d+\s*\]\s*\([^)\n]*\)[ \t]*:?[ \t]*$", re.M)
"""A line that reproduces a note's header from the prompt (``[1] (notes/physics.md,
Physics > Newton's laws)``): a copy of the notes block, not a citation of a claim."""


def cited_numbers_raw(reply: str) -> list[int]:
    """Every note number the reply cites, in order of first use, out-of-range ones kept
    (``[4]`` with three notes is read as 4; ``tutorlm.rag.prompt.cited_numbers`` drops it).

    Lines that only reproduce a note's header from the prompt do not count: a small
    model that pastes the notes block back cites nothing it claims."""
    seen: list[int] = []
    for match in _CITATION.finditer(_COPIED_HEADER.sub("", reply)):
        for part in re.split(r"\s*(?:,|;|and)\s*", match[1].strip()):
            bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part) if x]
            if len(bounds) == 2:
                bounds = list(range(bounds[0], min(bounds[1], bounds[0] + _MAX_RANGE - 1) + 1))
            seen.extend(n for n in bounds if n not in seen)
    return seen


def citation_precision(reply: str, n_sources: int) -> tuple[bool, str]:
    """Citation precision: cites at least one note, and every cited ``[n]`` is one of the
    ``n_sources`` notes numbered in the prompt."""
    cited = cited_numbers_raw(reply)
    if not cited:
        return False, "cites no note"
    missing = [n for n in cited if not 1 <= n <= n_sources]
    if missing:
        return False, f"cites {missing} but the prompt numbers notes 1-{n_sources}"
    return True, f"cites {cited} of {n_sources} notes"


def _heading_parts(heading: str) -> list[str]:
    return [normalize(part) for part in heading.split(">") if part.strip()]


def in_gold_section(source: str, heading: str, gold_file: str | None, gold_section: str | None):
    """Whether a note is from the gold section: its file is the gold file (equal, or
    one path ends the other: ``notes/physics.md`` and ``physics.md``) and its heading
    path holds the gold section's parts in a row (``Physics > Newton's laws`` and its
    subsections are in ``Newton's laws``). A missing gold file or section is not checked."""
    if gold_file:
        ours, theirs = source.replace("\\", "/").split("/"), gold_file.replace("\\", "/").split("/")
        shorter = min(len(ours), len(theirs))
        if ours[-shorter:] != theirs[-shorter:]:
            return False
    if gold_section:
        parts, gold = _heading_parts(heading), _heading_parts(gold_section)
        if not any(parts[i : i + len(gold)] == gold for i in range(len(parts) - len(gold) + 1)):
            return False
    return True


def citation_correctness(
    reply: str,
    sources: Sequence[tuple[str, str]],
    gold_file: str | None,
    gold_section: str | None,
) -> tuple[bool, str]:
    """Citation correctness: at least one cited note is from the gold section.

    ``sources[i]`` is the ``(file, heading path)`` of the note numbered ``[i+1]``.
    """
    gold = ", ".join(x for x in (gold_file, gold_section) if x)
    cited = [n for n in cited_numbers_raw(reply) if 1 <= n <= len(sources)]
    if not cited:
        return False, "cites no note of the prompt"
    right = [n for n in cited if in_gold_section(*sources[n - 1], gold_file, gold_section)]
    if right:
        return True, f"[{right[0]}] is from the gold section ({gold})"
    where = "; ".join(f"[{n}] {', '.join(sources[n - 1])}" for n in cited)
    offered = [i + 1 for i, s in enumerate(sources) if in_gold_section(*s, gold_file, gold_section)]
    note = f"the gold section is [{offered[0]}]" if offered else "no note of the prompt is gold"
    return False, f"cites {where}; gold is {gold} ({note})"


ABSTENTION_PATTERNS = (
    r"\b(?:notes?|sources?|context|passages?|material|text|they)\b[^.]{0,40}?"
    r"\b(?:do|does|did)(?: not|n't) (?:say|cover|mention|contain|include|state|give|answer"
    r"|address|discuss|provide|tell|have|explain)\b",
    r"\bnot (?:covered|mentioned|stated|given|included|found|discussed|addressed|answered"
    r"|provided|explained) (?:in|by) (?:the |these |your |my )?(?:course )?"
    r"(?:notes|sources|context|passages|material)\b",
    r"\bnot in the (?:course )?(?:notes|sources|context|passages|material)\b",
    r"\b(?:could not|couldn't|cannot|can't|can not|did not|didn't|unable to) (?:find|locate|see)\b",
    r"\b(?:cannot|can't|can not|unable to) (?:answer|tell|say|determine)\b",
    r"\bno (?:information|mention|details?|data)\b",
    r"\bnot enough information\b",
    r"\bi (?:do not|don't) know\b",
    r"\bi(?:'m| am) not sure\b",
)
"""What counts as saying the notes do not answer (on the case-folded reply, quotes made
ASCII): "the notes don't say", "not covered in the notes", "I could not find",
"I cannot answer", "no information", "I don't know", "I'm not sure"."""
_ABSTAINS = re.compile("|".join(f"(?:{p})" for p in ABSTENTION_PATTERNS))


def abstains(reply: str, question: str) -> tuple[bool, str]:
    """Abstention: the reply says the notes do not answer, and states no figure that is
    not in the question (a number the question does not give is a fabricated answer)."""
    said = _ABSTAINS.search(" ".join(reply.translate(_CHARS).casefold().split()))
    if said is None:
        return False, "does not say the notes lack the answer"
    asked = answer_numbers(question)
    invented = [n.text for n in answer_numbers(reply) if not any(same_number(n, q) for q in asked)]
    if invented:
        return False, f"says {said[0]!r} but states {', '.join(invented)}, not in the question"
    return True, f"says {said[0]!r}, no figure of its own"


_RESULT_BEFORE = re.compile(
    r"(?:=|≈|~|\b(?:is|are|equals|answer|result|gives|get|makes|be))\s*:?\s*$"
)
"""What before an occurrence states it as a result: "= 9", "x is 9", "answer: 9"."""


def _stated_as_result(text: str, start: int) -> bool:
    line_start = text.rfind("\n", 0, start) + 1
    return bool(_RESULT_BEFORE.search(text[line_start:start].casefold()))


def hint_keeps_answer(
    reply: str, final: str, question: str, variants: Sequence[str] = ()
) -> tuple[bool, str]:
    """Hint leakage, counted as kept (True) when the hint does not give the final answer.

    The hint leaks when it contains the final answer (a number matching it, or its
    text or a variant's). Where the answer also appears in the question ("find x if
    2x = x + 9", answer 9), repeating the question is not a leak: an occurrence leaks
    only when it is stated as a result (after "=", "is", "answer", ...)."""
    plain = _NOT_ANSWER_NUMBERS.sub(" ", _CITATION.sub(" ", _plain(reply)))
    text = normalize(plain)
    asked_numbers, asked_text = answer_numbers(question), normalize(question)
    for candidate in (final, *variants):
        target = answer_number(candidate)
        if target is not None:
            in_question = any(same_number(q, target) for q in asked_numbers)
            for number in numbers_in(plain):
                if same_number(number, target) and (
                    not in_question or _stated_as_result(plain, number.start)
                ):
                    how = "states it as a result" if in_question else "contains it"
                    return False, f"leaks {candidate!r}: {how} ({number.text!r})"
            continue
        pattern = _answer_pattern(candidate)
        if pattern is None:
            continue
        in_question = bool(pattern.search(asked_text))
        for match in pattern.finditer(text):
            if not in_question or _stated_as_result(text, match.start()):
                return (
                    False,
                    f"leaks {candidate!r} ({'stated as a result' if in_question else 'text'})",
                )
    return True, f"keeps back {final!r}"


_STATEMENT = re.compile(
    r"(?:(?:final\s+)?answer\s*(?:is|:|=)|####|\\boxed\{)(?P<rest>[^\n]*)", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def explanation_steps(reply: str) -> list[str]:
    """The steps of a reply: its lines, each cut into sentences, keeping those with at
    least three words or an equation ("Sure." is not a step; "20q = 240." is)."""
    pieces = [
        piece.strip()
        for line in _CITATION.sub(" ", reply).splitlines()
        for piece in _SENTENCE_END.split(line.strip())
    ]
    return [p for p in pieces if len(p.split()) >= 3 or "=" in p]


def explains(reply: str, final: str, variants: Sequence[str] = ()) -> tuple[bool, str]:
    """Explanation: at least two steps, ending with the correct final answer.

    The reply's answer is the sentence after its last "answer is" / "answer:" /
    "####" / ``\\boxed{`` (its first number, for a numeric answer); without such a
    statement, the reply's last number, or for a text answer its last step. A check
    after the statement ("The answer is 12. Check: 20*12 - 3 = 237") does not count.
    """
    steps = explanation_steps(reply)
    if len(steps) < 2:
        return False, f"{len(steps)} step(s); an explanation needs at least 2"
    candidates, numeric = [final, *variants], answer_number(final) is not None
    text = _CITATION.sub(" ", reply)
    statements = list(_STATEMENT.finditer(text))
    if statements:
        part, where = _SENTENCE_END.split(statements[-1]["rest"].strip())[0], "answer statement"
    else:
        part, where = (text, "last number") if numeric else (steps[-1], "last step")
    if numeric:
        numbers = answer_numbers(part)
        if not numbers:
            return False, f"{len(steps)} steps, but its {where} states no number"
        part = (numbers[0] if statements else numbers[-1]).text
    found = find_answer(part, candidates)
    if found is None:
        return False, f"{len(steps)} steps, but its {where} {part!r} is not {_shown(candidates)}"
    return True, f"{len(steps)} steps, its {where} {part!r} is {found[0]!r}"


_BARE_LETTER = re.compile(
    r"^(?:(?i:(?:the\s+)?(?:correct\s+|final\s+|right\s+)?(?:answer|option|choice)"
    r"(?:\s+is)?)\s*:?\s*)?[(\[]?(?P<letter>[A-J])[)\]]?\s*[.:)]?$"
)


def bare_letter(reply: str) -> tuple[bool, str]:
    """Letter collapse, counted (True) when the whole reply is a choice letter: "B",
    "(B)", "B.", "The answer is B", "Answer: B". A reply starting with a word that is a
    letter ("A force is...", "Because...") is not."""
    text = " ".join(reply.replace("*", "").replace("_", " ").split())
    match = _BARE_LETTER.match(text)
    if match:
        return True, f"answers with the letter {match['letter']!r} alone"
    return False, "not a bare letter"
