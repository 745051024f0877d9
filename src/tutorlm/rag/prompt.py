"""Put retrieved chunks into a prompt, numbered, within a token budget; read citations back.

The notes come before the question in the user turn, each as ``[n] (where) text``.
A small model attends best to what is close to the question and loses the thread
in long contexts, so the notes are capped by a token budget of the generator's own
tokenizer: whole chunks in rank order while they fit, then the next one cut to the
space left. The system turn asks for citations as ``[1]``, ``[2]``, which
``cited_numbers`` reads back so an answer can be shown with the passages it used.

``MODE_PROMPTS`` and ``tutor_messages`` are the one tutor prompt: the data stage
trains on it, the evaluation asks through it, and the served tutor answers with it,
so what the model learns is what it is asked.
"""

from __future__ import annotations

import re

from tutorlm.rag.records import Hit

CITE_INSTRUCTION = (
    "Numbered course notes come before the question. Use them when they help, and cite "
    "the notes you use as [1], [2] right after the sentence they support. If the notes "
    "do not answer the question, say so."
)
TUTOR_SYSTEM = (
    "You are a patient STEM tutor. Explain clearly and correctly, step by step when it helps."
)
DEFAULT_RAG_SYSTEM = f"{TUTOR_SYSTEM} {CITE_INSTRUCTION}"
MODE_PROMPTS = {
    "tutor": (
        "You are a patient STEM tutor. Explain the solution step by step, say why each "
        "step follows from the previous one, and end with the answer."
    ),
    "hint": (
        "You are a STEM tutor in hint mode. Never give the final answer or the full "
        "solution. Give one hint, or ask one guiding question, that helps the student "
        "take the next step on their own."
    ),
}
"""System prompts of the two tutoring modes: ``tutor`` explains, ``hint`` only guides."""
NOTES_HEADER = "Course notes:\n"
MIN_PARTIAL_TOKENS = 24
"""A cut chunk shorter than this is left out: a few words out of context mislead."""
_CITATION = re.compile(r"\[(\s*\d+(?:\s*(?:,|;|-|–|and)\s*\d+)*\s*)\]")


def _count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def _block(number: int, hit: Hit, text: str) -> str:
    return f"[{number}] ({hit.chunk.location()})\n{text}\n"


def format_context(hits: list[Hit], tokenizer, *, budget_tokens: int) -> tuple[str, list[Hit]]:
    """The numbered notes block and the hits it holds (``sources[i]`` is ``[i+1]``).

    The block, header included, is at most ``budget_tokens`` tokens of ``tokenizer``.
    Returns ``("", [])`` when not even a cut first chunk fits.
    """
    text, sources = NOTES_HEADER, []
    for hit in hits:
        number = len(sources) + 1
        candidate = text + ("\n" if sources else "") + _block(number, hit, hit.chunk.text.strip())
        if _count(tokenizer, candidate) <= budget_tokens:
            text, sources = candidate, [*sources, hit]
            continue
        cut = _cut_to_fit(
            text, number, hit, tokenizer, budget_tokens, joiner="\n" if sources else ""
        )
        if cut is not None:
            text, sources = cut, [*sources, hit]
        break
    return (text.rstrip("\n"), sources) if sources else ("", [])


def _cut_to_fit(text, number, hit, tokenizer, budget_tokens, *, joiner) -> str | None:
    """``text`` plus the longest head of ``hit``'s chunk that fits, ending in "…"."""
    ids = tokenizer.encode(hit.chunk.text.strip(), add_special_tokens=False)
    low, high, best = MIN_PARTIAL_TOKENS, len(ids) - 1, None
    while low <= high:  # the longest head whose whole prompt fits
        middle = (low + high) // 2
        head = tokenizer.decode(ids[:middle]).rstrip() + " …"
        candidate = text + joiner + _block(number, hit, head)
        if _count(tokenizer, candidate) <= budget_tokens:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


def build_rag_messages(
    question: str, hits: list[Hit], tokenizer, *, budget_tokens: int, system: str | None = None
) -> tuple[list[dict], list[Hit]]:
    """Chat messages that ask ``question`` over the retrieved notes, and the notes used.

    Args:
        question: the student's question.
        hits: retrieved chunks, best first.
        tokenizer: the generator's tokenizer (the budget is counted in its tokens).
        budget_tokens: most tokens the notes block may take.
        system: a system prompt to use instead of ``DEFAULT_RAG_SYSTEM``; the
            citation instruction is appended to it.

    Returns:
        ``(messages, sources)``: a system and a user message; ``sources[i]`` is the
        hit numbered ``[i+1]`` in the prompt. With no notes in budget the user turn
        is the bare question and the system turn carries no citation instruction.
    """
    context, sources = format_context(hits, tokenizer, budget_tokens=budget_tokens)
    if not sources:
        base = TUTOR_SYSTEM if system is None else system.strip()
        return [{"role": "system", "content": base}, {"role": "user", "content": question}], []
    system_text = DEFAULT_RAG_SYSTEM if system is None else f"{system.strip()} {CITE_INSTRUCTION}"
    user = f"{context}\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": system_text}, {"role": "user", "content": user}], sources


def tutor_messages(
    question: str,
    hits: list[Hit],
    tokenizer,
    *,
    mode: str,
    budget_tokens: int,
    system: str | None = None,
) -> tuple[list[dict], list[Hit]]:
    """The served tutor's prompt for a single-turn question: the mode's system prompt
    and the retrieved notes, numbered (what ``Tutor.prepare`` builds for one question).

    Args:
        question: the student's question.
        hits: retrieved notes, best first; empty for no retrieval (then the prompt is
            the system prompt and the bare question).
        tokenizer: the generator's tokenizer (the notes' budget is counted in it).
        mode: ``tutor`` or ``hint`` (a key of ``MODE_PROMPTS``).
        budget_tokens: most tokens the notes block may take.
        system: a system prompt that replaces the mode's (a client's own).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in MODE_PROMPTS:
        raise ValueError(f"unknown mode {mode!r}: use one of {sorted(MODE_PROMPTS)}")
    base = MODE_PROMPTS[mode] if system is None else system
    return build_rag_messages(question, hits, tokenizer, budget_tokens=budget_tokens, system=base)


def cited_numbers(answer: str, n_sources: int) -> list[int]:
    """The source numbers an answer cites, in order of first use.

    Reads ``[2]``, ``[1, 3]``, ``[1][2]``, ``[1-3]`` and ``[1 and 2]``; numbers outside
    ``1..n_sources`` (a model inventing ``[7]`` from three notes) are dropped.
    """
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        for part in re.split(r"\s*(?:,|;|and)\s*", match.group(1).strip()):
            bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part) if x]
            if len(bounds) == 2:
                numbers = range(bounds[0], min(bounds[1], n_sources) + 1)
            else:
                numbers = bounds
            for number in numbers:
                if 1 <= number <= n_sources and number not in seen:
                    seen.append(number)
                if len(seen) == n_sources:
                    return seen
    return seen


def cited_sources(answer: str, sources: list[Hit]) -> list[tuple[int, Hit]]:
    """``(number, hit)`` of each source the answer cites, in order of first use."""
    return [(number, sources[number - 1]) for number in cited_numbers(answer, len(sources))]
