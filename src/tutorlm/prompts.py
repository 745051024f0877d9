"""The multiple-choice prompt blocks, written once for the stages that show them to a model.

The data stage trains on them (MCQA items turned into SFT conversations or preference
pairs) and the evaluate stage scores with them, so a model is asked exactly what it
learned to answer: the question, the lettered options, then "Answer:" on its own line
(letter scoring), or the question alone before "Answer:" (choice scoring).
"""

from __future__ import annotations

from collections.abc import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mcqa_block(question: str, choices: Sequence[str]) -> str:
    """``question\\nA. ..\\nB. ..\\nAnswer:`` (lm-evaluation-harness's MMLU layout)."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"more than {len(LETTERS)} choices")
    options = "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{question.strip()}{options}\nAnswer:"


def question_only_block(question: str) -> str:
    """``Question: ...\nAnswer:`` (lm-evaluation-harness's ``mmlu_continuation``
    layout): the choices are not shown; each is scored as the answer's text."""
    return f"Question: {question.strip()}\nAnswer:"
