"""The model-based question writer: any model spec or OpenAI-compatible endpoint.

For each passage the model is asked for one multiple-choice question as JSON. What
it writes becomes a :class:`~tutorlm.quiz.records.Question` drawn from that passage
and then passes the same checks as the rule-based questions (the builder runs them):
a model that leaks the answer, writes a second right answer or asks about something
the passage does not say is dropped with the reason counted. A reply that is not
the JSON asked for is counted under ``unparsed`` and skipped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence

from tutorlm.quiz.passages import Passage
from tutorlm.quiz.records import Question
from tutorlm.quiz.text import plain_math

Complete = Callable[[list[dict]], str]
"""Chat messages in, the model's reply out."""

SYSTEM = (
    "You write practice questions for students from their course notes. Reply with one "
    "JSON object and nothing else."
)
PROMPT = """Passage ({where}):
{passage}

Write one multiple-choice question that this passage answers. The question must not
contain the answer. Give three wrong choices of the same kind as the answer, none of
them also right. Reply with JSON only:
{{"question": "...", "answer": "...", "distractors": ["...", "...", "..."], "variants": ["other accepted spellings of the answer"]}}"""


def parse_reply(reply: str) -> dict | None:
    """The first JSON object of the reply with the fields asked for, else None."""
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    if match is None:
        return None
    try:
        data = json.loads(match[0])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    fields = (data.get("question"), data.get("answer"), data.get("distractors"))
    if not all(isinstance(x, str) and x.strip() for x in fields[:2]):
        return None
    distractors = fields[2]
    if not isinstance(distractors, list) or len(distractors) < 3:
        return None
    if not all(isinstance(x, str) and x.strip() for x in distractors[:3]):
        return None
    variants = data.get("variants") or []
    return {
        "question": fields[0].strip(),
        "answer": fields[1].strip(),
        "distractors": [x.strip() for x in distractors[:3]],
        "variants": [v.strip() for v in variants if isinstance(v, str) and v.strip()],
    }


class ModelGenerator:
    """Asks a model for one question per passage.

    Args:
        complete: sends chat messages, returns the reply (:func:`local_completer`,
            :func:`endpoint_completer`, or a scripted one in tests).
        label: the model's name, recorded as the questions' generator.
        max_passages: ask about at most this many passages (in notes order, worked
            examples left out); None: all.
    """

    def __init__(self, complete: Complete, label: str, max_passages: int | None = None):
        self.complete, self.label, self.max_passages = complete, label, max_passages
        self.name = f"model:{label}"
        self.unparsed: Counter = Counter()

    def generate(self, passages: Sequence[Passage]) -> list[Question]:
        chosen = [p for p in passages if not p.worked_example][: self.max_passages]
        questions = []
        for passage in chosen:
            where = f"{passage.file}, {passage.heading}"
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": PROMPT.format(where=where, passage=passage.text)},
            ]
            parsed = parse_reply(self.complete(messages))
            if parsed is None:
                self.unparsed["not the JSON asked for"] += 1
                continue
            questions.append(self._question(passage, parsed))
        return questions

    def _question(self, passage: Passage, parsed: dict) -> Question:
        where = f"{passage.file}, {passage.heading.replace(' > ', ' › ')}"
        return Question(
            id="",
            kind="mcqa",
            question=parsed["question"],
            choices=[parsed["answer"], *parsed["distractors"]],
            answer=0,
            answer_text=parsed["answer"],
            variants=parsed["variants"],
            file=passage.file,
            section=passage.section,
            heading=passage.heading,
            passage=passage.text,
            chunk=passage.chunk,
            explanation=f"The notes ({where}) say: “{plain_math(passage.text)}”",
            generator=self.name,
        )


def local_completer(spec: str, *, max_new_tokens: int = 200, online: bool = False) -> Complete:
    """Greedy replies of a model loaded here (bundled name, directory or hub id)."""
    from tutorlm.generation import chat
    from tutorlm.models import load_model

    model, tokenizer = load_model(spec, online=online)

    def complete(messages: list[dict]) -> str:
        return chat(model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=0.0)

    return complete


def endpoint_completer(
    url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0
) -> Complete:
    """Replies of an OpenAI-compatible server (vLLM, llama-server, a hosted API, tutorlm),
    at temperature 0. ``url`` is ``http://host:port`` or ``http://host:port/v1``."""
    import httpx

    base = url.rstrip("/") if url.rstrip("/").endswith("/v1") else f"{url.rstrip('/')}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(timeout=timeout_s, headers=headers)

    def complete(messages: list[dict]) -> str:
        body = {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": 300}
        response = client.post(f"{base}/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"] or ""

    return complete
