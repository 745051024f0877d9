"""The rule-based question writer: key terms, definitions, numbers and formulas.

It reads sentences of the notes (:mod:`tutorlm.quiz.passages`) and writes four
shapes of question, each a blank in (or a problem on) one sentence, so the sentence
is the question's passage and its explanation:

- **definition** (short answer): "___ is the energy of motion" -> kinetic energy,
  from sentences "X is/are the|a|an ..." and "..., called X, ...";
- **term** (multiple choice): a key term of the same notes file blanked in a
  sentence that uses it;
- **number** (multiple choice): a number with a unit blanked ("about ___ m/s");
- **formula** (numeric): a formula of the sentence with new values, answer computed.

Distractors come from the same notes: other key terms of the file, other numbers
with the same unit (else the answer scaled by a factor, the usual slips: a factor
of 2, 4 or 10). It is deterministic for a seed. It does not run the quality checks
(:mod:`tutorlm.quiz.checks`): the builder does, so their pass rate measures it.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tutorlm.quiz.formulas import Formula, formulas_in, plain_symbol, show_number, significant
from tutorlm.quiz.passages import Passage
from tutorlm.quiz.records import Question
from tutorlm.quiz.text import BLANK, plain_math, without_article

_DEFINITION = re.compile(
    r"^(?:The |A |An )?(?P<term>[A-Za-z][\w'-]*(?: [a-z][\w'-]*){0,3})(?: \$[^$]{1,12}\$)? "
    r"(?:(?:is|are) (?:the|a|an)|describes|measures|studies|states|says|stores|converts|finds"
    r"|reverses|turns|links) (?P<rest>[^;]{12,})$"
)
_ABBREVIATED = re.compile(r"(?P<words>(?:[\w'-]+ ){1,3})\((?P<abbr>[A-Za-z]{1,5})\)")
_CALLED = re.compile(
    r"(?:,|\bis|\bare) (?:called|known as) (?:a |an |the )?(?P<term>[a-z][\w'-]*(?: [a-z][\w'-]*){0,2})"
    r"(?P<abbr> \([A-Za-z]{1,6}\))?(?=[,.;]| \(|$)"
)
_NOT_TERMS = {
    "it", "this", "that", "these", "those", "there", "each", "every", "its", "one", "result",
    "example", "answer", "first", "second", "third", "zeroth", "law", "rule", "same", "value",
    "when", "here", "both", "all", "some", "such", "their", "they", "he", "she", "we", "you",
    "if", "for", "in", "on", "at", "and", "or", "but", "so", "since", "because", "most", "many",
    "where", "which", "of", "to", "with",
}  # fmt: skip
_UNIT_STOPWORDS = {
    "for", "and", "or", "of", "in", "to", "the", "a", "an", "is", "are", "was", "with", "by",
    "on", "at", "from", "as", "times", "per", "into", "than", "more", "less", "out", "each",
}  # fmt: skip
_LEANING = re.compile(r"^(?:It|Its|They|Their|This|These|That|Those|Such|Both|Here|He|She)\b")
"""A sentence opening so leans on the one before that, alone, it is ambiguous."""
_NUMBER = re.compile(
    r"(?<![\w.,/^–−-])(?P<number>\d+(?:\.\d+)?)(?![\d.,]*\d)(?![–−-]\d)\s?"
    r"(?P<unit>%|°C|(?<= )[A-Za-zµμΩ][\w/²³·µΩ]*(?:\([\w/²³·]+\))?)"
)
_UNIT_WORDS = {
    "metres", "micrometres", "nanometres", "kilometres", "seconds", "minutes", "hours", "days",
    "years", "kelvin", "hertz", "joules", "newtons", "watts", "volts", "amperes", "ohms",
    "grams", "kilograms", "litres", "moles", "atoms", "electrons", "protons", "neutrons",
    "codons", "bases", "bits", "bytes", "degrees", "percent", "chromosomes", "pairs",
}  # fmt: skip
"""Words that are a unit (or what is counted) after a number; a shorter token with a
letter and a symbol or at most three letters ("m/s", "kg", "Hz") is one too."""
_MATH = re.compile(r"\$[^$]*\$")
_LOWER = (1 / 2, 1 / 4, 1 / 10)
_UPPER = (2, 4, 10)
TERMS_PER_SENTENCE = 2
"""Most key terms (or numbers) blanked in one sentence, each its own question."""
VALUES = (2, 3, 4, 5, 6, 8, 10, 12, 1.5, 2.5)
"""Values a numeric problem gives its symbols (``g`` is always 9.81)."""


@dataclass(frozen=True)
class Term:
    """A key term and the sentence that defines it; ``unit`` for "measured in joules (J)"."""

    text: str
    passage: Passage
    unit: bool = False


def _balancer(seed: int, salt: str):
    """Targets 0..3 in a seeded order that repeats every four draws: over n questions
    each target is drawn n/4 times, give or take one."""
    rng = random.Random(f"{seed}:{salt}")
    while True:
        block = [0, 1, 2, 3]
        rng.shuffle(block)
        yield from block


def _clean_term(term: str, at_start: bool) -> str:
    term = without_article(term.strip())
    proper = "'" in term.split()[0]  # Ohm's law, Bayes' theorem
    if at_start and len(term) > 1 and not term[1].isupper() and not proper:
        term = term[0].lower() + term[1:]
    return term


def _blank(sentence: str, start: int, end: int) -> str:
    return plain_math(sentence[:start] + BLANK + sentence[end:])


def _word_span(sentence: str, term: str) -> tuple[int, int] | None:
    """Where ``term`` occurs once in ``sentence`` (whole words, any case), else None."""
    found = list(re.finditer(rf"(?<![\w-]){re.escape(term)}s?(?![\w-])", sentence, re.IGNORECASE))
    return found[0].span() if len(found) == 1 else None


class RuleGenerator:
    """Writes questions from passages by rule; ``seed`` fixes every choice it makes."""

    name = "rules"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def generate(self, passages: Sequence[Passage]) -> list[Question]:
        self.rng = random.Random(self.seed)
        self.length_rank = _balancer(self.seed, "length")
        self.value_rank = _balancer(self.seed, "value")
        terms = self.key_terms(passages)
        numbers = self._numbers_by_unit(passages)
        questions: list[Question] = []
        for passage in passages:
            questions += self._definitions(passage, terms)
            questions += self._term_cloze(passage, terms)
            questions += self._number_cloze(passage, numbers)
            questions += self._formula_problems(passage)
        return questions

    # -- key terms and definitions ---------------------------------------------------------

    def key_terms(self, passages: Sequence[Passage]) -> dict[str, list[Term]]:
        """Terms the notes define, per file, first definition kept."""
        terms: dict[str, dict[str, Term]] = defaultdict(dict)
        for passage in passages:
            for term, start, _ in _defined(passage.text):
                unit = passage.text[:start].endswith(" in ")
                terms[passage.file].setdefault(term.lower(), Term(term, passage, unit))
        return {file: list(found.values()) for file, found in terms.items()}

    def _definitions(self, passage: Passage, terms: dict[str, list[Term]]) -> list[Question]:
        made = []
        for term, start, end in _defined(passage.text):
            base = term[:-1] if term.endswith("s") and not term.endswith("ss") else term
            pattern = rf"(?<![\w-]){re.escape(base)}(?:s|es)?(?![\w-])"
            if len(re.findall(pattern, passage.text, re.IGNORECASE)) > 1:
                continue  # blanked once, it would still stand in the stem
            abbreviation = re.match(r" ?\(([A-Za-z]{1,6})\)", passage.text[end:])
            variants = []
            if abbreviation:  # blanked with the term: it would give the answer away
                end += abbreviation.end()
                variants = [abbreviation[1]] if len(abbreviation[1]) > 1 else []
            stem = _blank(passage.text, start, end)
            made += self._term_question(passage, term, variants, stem, terms, "definition", "short")
        return made

    def _term_cloze(self, passage: Passage, terms: dict[str, list[Term]]) -> list[Question]:
        defined_here = {term.lower() for term, _, _ in _defined(passage.text)}
        if passage.worked_example or _LEANING.match(passage.text):
            return []
        candidates = sorted(
            (t for t in terms.get(passage.file, []) if t.passage != passage),
            key=lambda t: (-len(t.text), t.text),
        )
        made: list[Question] = []
        for term in candidates:
            if term.text.lower() in defined_here or len(made) == TERMS_PER_SENTENCE:
                continue
            span = _word_span(passage.text, term.text)
            if span is None or _inside_math(passage.text, span[0]):
                continue
            if any(term.text.lower() in q.answer_text.lower() for q in made):
                continue
            stem = _blank(passage.text, *span)
            made += self._term_question(passage, term.text, [], stem, terms, "term", "mcqa")
        return made

    def _term_question(self, passage, term, variants, stem, terms, rule, kind) -> list[Question]:
        unit = stem[: stem.index(BLANK)].endswith(" in ")
        ordered = [
            (t, file == passage.file) for file, found in sorted(terms.items()) for t in found
        ]
        ordered.sort(key=lambda pair: (pair[0].unit != unit, not pair[1]))  # stable: notes order
        pool = [t.text for t, _ in ordered]
        distractors = self._text_distractors(term, pool, passage.text)
        if len(distractors) < 3:
            return []
        label = passage.subject.replace("_", " ").title()
        if term.lower().rstrip("s") not in passage.section.lower():  # the title may be the answer
            label += f", {passage.section}"
        return [
            _question(
                passage,
                kind=kind,
                question=f"Fill in the blank ({label}): {stem}",
                choices=[term, *distractors],
                answer_text=term,
                variants=[v for v in _spellings(term) + variants if v.lower() != term.lower()],
                generator=f"{self.name}:{rule}",
            )
        ]

    def _text_distractors(self, answer: str, pool: list[str], sentence: str) -> list[str]:
        """Three terms of ``pool`` (same file first) that are not the answer, not in the
        answer's sentence and not one inside another; chosen so that the answer's rank by
        length among the four is the next balanced target."""
        low = sentence.lower()
        seen, fitting = {answer.lower()}, []
        for term in pool:
            key = term.lower()
            if key in seen or key in low or key in answer.lower() or answer.lower() in key:
                continue
            seen.add(key)
            fitting.append(term)
        fitting = fitting[:12]  # the same file's terms first: closest in meaning
        shorter = [t for t in fitting if len(t) < len(answer)]
        longer = [t for t in fitting if len(t) >= len(answer)]
        self.rng.shuffle(shorter)
        self.rng.shuffle(longer)
        rank = next(self.length_rank)
        rank = min(rank, len(shorter)) if len(longer) >= 3 - rank else 3 - min(3, len(longer))
        return shorter[:rank] + longer[: 3 - rank]

    # -- numbers ---------------------------------------------------------------------------

    def _numbers_by_unit(self, passages: Sequence[Passage]) -> dict[str, list[float]]:
        found: dict[str, list[float]] = defaultdict(list)
        for passage in passages:
            for match in _numbers(passage.text):
                found[match["unit"].lower()].append(float(match["number"]))
        return found

    def _number_cloze(self, passage: Passage, numbers: dict[str, list[float]]) -> list[Question]:
        every = re.findall(r"\d+(?:\.\d+)?", passage.text)
        if passage.worked_example or _LEANING.match(passage.text):
            return []
        made: list[Question] = []
        for match in _numbers(passage.text)[:TERMS_PER_SENTENCE]:
            value, unit = float(match["number"]), match["unit"]
            if every.count(match["number"]) != 1 or value == 0:
                continue
            if not _is_unit(unit) or 1500 <= value <= 2100:
                continue  # a year ("the 2017 paper") has no "other values" of its kind
            others = sorted({v for v in numbers[unit.lower()] if not _near(v, value)})
            values = self._ranked_values(value, others)
            space = "" if unit in ("%",) else " "
            shown = [match["number"] if v == value else show_number(v) for v in values]
            choices = [f"{number}{space}{unit}" for number in shown]
            section = f"({passage.subject.replace('_', ' ').title()}, {passage.section})"
            stem = _blank(passage.text, match.start("number"), match.end("number"))
            made.append(
                _question(
                    passage,
                    kind="mcqa",
                    question=f"Fill in the blank {section}: {stem}",
                    choices=choices,
                    answer_text=choices[values.index(value)],
                    generator=f"{self.name}:number",
                    answer=values.index(value),
                )
            )
        return made

    def _ranked_values(self, value: float, others: list[float]) -> list[float]:
        """The answer and three other values, ascending, the answer at the next
        balanced rank: other values of the same unit from the notes where there are
        enough below and above it, else the answer scaled by the usual slips."""
        rank = next(self.value_rank)
        below = [v for v in others if v < value and v > 0]
        above = [v for v in others if v > value]
        self.rng.shuffle(below)
        self.rng.shuffle(above)
        below = (below[:rank] + [significant(value * f) for f in _LOWER])[:rank]
        above = (above[: 3 - rank] + [significant(value * f) for f in _UPPER])[: 3 - rank]
        return sorted({*below, value, *above})

    # -- formulas --------------------------------------------------------------------------

    def _formula_problems(self, passage: Passage) -> list[Question]:
        made: list[Question] = []
        for formula in formulas_in(passage.text):
            values = self._values(formula)
            try:
                result = significant(formula.evaluate(values))
            except (ZeroDivisionError, OverflowError):
                continue
            if not 1e-3 <= abs(result) <= 1e6:
                continue
            ranked = self._ranked_values(result, [])
            target = plain_symbol(formula.target)
            right_side = plain_math(f"${formula.latex}$").split("=", 1)[1].strip()
            given = ", ".join(f"{plain_symbol(s)} = {show_number(v)}" for s, v in values.items())
            at = passage.text.index(formula.latex)
            lead = plain_math(passage.text[: at - 1]).rstrip(" ,:")
            after = passage.text[at + len(formula.latex) + 1 :]
            if len(lead.split()) < 4 or not re.match(r"^(?:[,.;]|$)", after):
                continue  # the formula must close a statement the lead makes
            section = f"{passage.subject.replace('_', ' ').title()}, {passage.section}"
            question = (
                f"({section}) {lead}: {plain_math('$' + formula.latex + '$')}. "
                f"Find {target} when {given} (SI units)."
            )
            made.append(
                _question(
                    passage,
                    kind="numeric",
                    question=question,
                    choices=[show_number(v) for v in ranked],
                    answer_text=show_number(result),
                    generator=f"{self.name}:formula",
                    answer=ranked.index(result),
                    formula=formula.latex,
                    values={plain_symbol(s): v for s, v in values.items()},
                    working=f"{target} = {right_side} with {given} gives {show_number(result)}.",
                )
            )
        return made

    def _values(self, formula: Formula) -> dict[str, float]:
        return {s: 9.81 if s == "g" else float(self.rng.choice(VALUES)) for s in formula.symbols}


def _defined(sentence: str) -> list[tuple[str, int, int]]:
    """``(term, start, end)`` of each term a sentence defines."""
    found = []
    offset = 0
    for clause in re.split(r"(?<=;) ", sentence):
        match = _DEFINITION.match(clause.rstrip("."))
        if match and not {match["term"].split()[0].lower(), match["term"].split()[-1]} & _NOT_TERMS:
            start = offset + match.start("term")
            term = _clean_term(match["term"], at_start=start == 0)
            found.append((term, start, start + len(match["term"])))
        offset += len(clause) + 1
    for match in _CALLED.finditer(sentence):
        if match["term"].split()[0] not in _NOT_TERMS:
            found.append((match["term"], match.start("term"), match.end("term")))
    for match in _ABBREVIATED.finditer(sentence):
        words, abbr = match["words"].split(), match["abbr"]
        for size in (1, 2, 3)[: len(words)]:
            chosen = words[-size:]
            initials = "".join(part[0] for w in chosen for part in w.split("-") if part)
            single = len(abbr) == 1 and abbr.isupper() and size == 1
            if (
                initials.lower() == abbr.lower()
                and (len(abbr) > 1 or single)
                or (size == 2 and abbr.endswith(chosen[1]) and abbr[0] == chosen[0][0])
            ):
                if chosen[0].lower() in _NOT_TERMS:
                    break
                start = match.start("words") + len(match["words"]) - len(" ".join(chosen)) - 1
                term = _clean_term(" ".join(chosen), at_start=start == 0)
                found.append((term, start, start + len(" ".join(chosen))))
                break
    return found


def _numbers(sentence: str) -> list[re.Match]:
    masked = _MATH.sub(lambda m: "\0" * len(m[0]), sentence)
    return [m for m in _NUMBER.finditer(masked) if not sentence.startswith("Worked", 0)]


def _is_unit(token: str) -> bool:
    if token in ("%", "°C") or token.lower() in _UNIT_WORDS:
        return True
    if token.lower() in _UNIT_STOPWORDS:
        return False
    return len(token) <= 3 or bool(re.search(r"[^A-Za-z]", token))


def _inside_math(sentence: str, position: int) -> bool:
    return any(m.start() <= position < m.end() for m in _MATH.finditer(sentence))


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= 0.05 * max(abs(a), abs(b))


def _spellings(term: str) -> list[str]:
    """The term, and for one word its plural or singular (a student may type either)."""
    if " " in term or not term.islower():
        return [term]
    if term.endswith("s") and not term.endswith(("ss", "is", "us")):
        return [term, term[:-1]]
    if term.endswith(("s", "x", "y", "h", "um", "a")):
        return [term]
    return [term, term + "s"]


def _question(passage: Passage, *, kind, question, choices, answer_text, generator,
              answer: int = 0, variants=(), formula=None, values=None, working="") -> Question:  # fmt: skip
    where = f"{passage.file}, {passage.heading.replace(' > ', ' › ')}"
    explanation = f"The notes ({where}) say: “{plain_math(passage.text)}”"
    if working:
        explanation += f" So {working}"
    return Question(
        id="",
        kind=kind,
        question=question,
        choices=list(choices),
        answer=answer,
        answer_text=answer_text,
        variants=list(variants),
        file=passage.file,
        section=passage.section,
        heading=passage.heading,
        passage=passage.text,
        chunk=passage.chunk,
        explanation=explanation,
        generator=generator,
        formula=formula,
        values=dict(values or {}),
    )
