"""``tutorlm quiz take``: one question at a time in the terminal.

A multiple-choice question shows its choices and takes a letter or the answer's
words; a short-answer or numeric one takes typed text. Each reply is graded
(:mod:`tutorlm.quiz.grade`) and followed by the explanation with its source; the
end shows the score and the sections to read again.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence

from tutorlm.quiz.grade import Graded, Summary, grade, summarize
from tutorlm.quiz.records import LETTERS, Question

PROMPTS = {
    "mcqa": "your answer (a letter, or the answer itself)",
    "short": "your answer (a word or phrase)",
    "numeric": "your answer (a number)",
}


def show_question(question: Question, number: int, total: int) -> str:
    """The question as the terminal shows it."""
    lines = [f"Question {number}/{total}  [{question.file} › {question.section}]"]
    lines += textwrap.wrap(question.question, 96) or [""]
    if question.kind == "mcqa":
        lines += [f"  {LETTERS[i]}. {choice}" for i, choice in enumerate(question.choices)]
    return "\n".join(lines)


def show_verdict(graded: Graded) -> str:
    question = graded.question
    head = "right" if graded.correct else f"not quite: the answer is {question.answer_text}"
    if question.kind == "mcqa":
        head += "" if graded.correct else f" ({question.letter})"
    body = textwrap.fill(question.explanation, 96, initial_indent="  ", subsequent_indent="  ")
    return f"{head}  ({graded.why})\n{body}"


def show_summary(summary: Summary) -> str:
    lines = [f"score: {summary.score}/{summary.total}"]
    if summary.reread:
        lines.append("sections to re-read:")
        lines += [f"  {file} › {heading.replace(' > ', ' › ')}" for file, heading in summary.reread]
    else:
        lines.append("every answer right: nothing to re-read")
    return "\n".join(lines)


def take_quiz(
    questions: Sequence[Question],
    ask: Callable[[str], str] | None = None,
    say: Callable[[str], None] = print,
) -> list[Graded]:
    """Ask every question, grade each reply, and say the verdict and the summary.

    ``ask`` and ``say`` are ``input`` and ``print`` in the terminal; tests script them.
    End of input (Ctrl-D) ends the quiz early, with the questions answered so far.
    """
    ask = ask or input  # looked up now, so that a replaced ``input`` is the one asked
    graded: list[Graded] = []
    for number, question in enumerate(questions, start=1):
        say(show_question(question, number, len(questions)))
        try:
            reply = ask(f"{PROMPTS[question.kind]}> ")
        except EOFError:
            say("")
            break
        graded.append(grade(question, reply))
        say(show_verdict(graded[-1]) + "\n")
    say(show_summary(summarize(graded)))
    return graded
