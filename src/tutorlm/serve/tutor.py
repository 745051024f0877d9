"""The tutor: a tutoring mode, retrieved course notes and an engine, shared by the
terminal chat and the HTTP API so that both answer a question the same way.

A conversation becomes a prompt in three steps: the mode's system prompt (unless
the client sent its own), the notes retrieved for the latest question, numbered
so the answer can cite them (``tutorlm.rag.build_rag_messages``), and the earlier
turns in between. The notes go with the latest question only: earlier answers
already carry what they used, and a small model's window is short.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tutorlm.errors import TutorlmError
from tutorlm.rag.prompt import MODE_PROMPTS  # one prompt for training, eval and serving


class ConversationError(TutorlmError, ValueError):
    """A conversation that cannot be answered (no question, empty text), with why."""


@dataclass
class Prepared:
    """A conversation ready for the engine.

    Attributes:
        messages: system prompt, earlier turns, and the latest question with its notes.
        sources: the retrieved hits in the prompt; ``sources[i]`` is cited as ``[i+1]``.
        mode: the tutoring mode used.
    """

    messages: list[dict]
    sources: list = field(default_factory=list)
    mode: str = "tutor"


def citation_records(sources: list, answer: str) -> list[dict]:
    """The notes a reply was given, as JSON objects, each marked whether the reply cites it.

    ``number`` is the ``[n]`` the prompt used; ``location`` is what a reader looks for
    (file, page, heading); ``text`` is the passage itself.
    """
    from tutorlm.rag import cited_numbers

    cited = set(cited_numbers(answer, len(sources)))
    return [
        {
            "number": number,
            "source": hit.chunk.source,
            "heading": hit.chunk.heading,
            "page": hit.chunk.page,
            "location": hit.chunk.location(),
            "text": hit.chunk.text.strip(),
            "score": round(float(hit.score), 4),
            "cited": number in cited,
        }
        for number, hit in enumerate(sources, start=1)
    ]


class Tutor:
    """Turns conversations into prompts (mode + notes) and hands them to an engine.

    Args:
        engine: a ``LocalEngine`` or ``RemoteEngine`` (``tokenizer``, ``name``,
            ``count_prompt_tokens``, ``submit``).
        index: a ``tutorlm.rag.Index`` to cite, or None for no retrieval.
        k: notes retrieved per question.
        search_mode: ``dense``, ``bm25`` or ``hybrid``.
        budget_tokens: most prompt tokens the notes may take.
        mode: the default tutoring mode.
    """

    def __init__(
        self,
        engine,
        *,
        index=None,
        k: int = 3,
        search_mode: str = "hybrid",
        budget_tokens: int = 768,
        mode: str = "tutor",
    ):
        if mode not in MODE_PROMPTS:
            raise ConversationError(f"unknown mode {mode!r}: use one of {sorted(MODE_PROMPTS)}")
        self.engine, self.index = engine, index
        self.k, self.search_mode, self.budget_tokens, self.mode = (
            k,
            search_mode,
            budget_tokens,
            mode,
        )
        self._search_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.engine.name

    def warm_up(self) -> None:
        """Load the index's embedding model now rather than on the first question."""
        if self.index is not None:
            self.search("warm up")

    def search(self, question: str) -> list:
        """Notes for a question (serialised: the embedder loads lazily, once)."""
        if self.index is None:
            return []
        with self._search_lock:
            return self.index.search(question, k=self.k, mode=self.search_mode)

    def prepare(
        self, conversation: list[dict], *, mode: str | None = None, use_rag: bool = True
    ) -> Prepared:
        """Build the prompt for the reply to ``conversation``.

        Args:
            conversation: ``{"role", "content"}`` turns; the last must be the user's.
                A ``system`` turn from the client replaces the mode's prompt.
            mode: ``tutor`` or ``hint``; None uses the default.
            use_rag: retrieve notes when an index is loaded.

        Raises:
            ConversationError: no user turn last, or an empty question.
        """
        mode = mode or self.mode
        if mode not in MODE_PROMPTS:
            raise ConversationError(f"unknown mode {mode!r}: use one of {sorted(MODE_PROMPTS)}")
        if not conversation or conversation[-1]["role"] != "user":
            raise ConversationError("the last message must be the user's question")
        question = conversation[-1]["content"]
        if not question.strip():
            raise ConversationError("the question is empty")
        client_system = [m["content"] for m in conversation if m["role"] == "system"]
        system = "\n\n".join(client_system) if client_system else MODE_PROMPTS[mode]
        history = [
            {"role": m["role"], "content": m["content"]}
            for m in conversation[:-1]
            if m["role"] != "system"
        ]
        if self.index is not None and use_rag:
            from tutorlm.rag import build_rag_messages

            hits = self.search(question)
            (system_turn, user_turn), sources = build_rag_messages(
                question,
                hits,
                self.engine.tokenizer,
                budget_tokens=self.budget_tokens,
                system=system,
            )
            return Prepared([system_turn, *history, user_turn], sources, mode)
        messages = [{"role": "system", "content": system}, *history, conversation[-1]]
        return Prepared([{"role": m["role"], "content": m["content"]} for m in messages], [], mode)

    def prepare_within(
        self, conversation: list[dict], max_prompt_tokens: int, **kwargs
    ) -> tuple[Prepared, int]:
        """Like :meth:`prepare`, dropping the oldest turns until the prompt fits.

        The terminal chat uses it so that a long session keeps going. Returns the
        prepared prompt and how many earlier turns were dropped; the latest question
        is never dropped (a prompt that is too long with it alone is returned as is).
        Turns go by exchange (a question and its answers), so that the kept history
        never starts with an answer to a question it no longer holds.
        """
        turns = list(conversation)
        dropped = 0
        while True:
            prepared = self.prepare(turns, **kwargs)
            too_long = self.engine.count_prompt_tokens(prepared.messages) > max_prompt_tokens
            earlier = [i for i, m in enumerate(turns[:-1]) if m["role"] != "system"]
            if not too_long or not earlier:
                return prepared, dropped
            del turns[earlier[0]]
            dropped += 1
            while (first := _first_turn(turns)) is not None and turns[first]["role"] != "user":
                del turns[first]
                dropped += 1


def _first_turn(turns: list[dict]) -> int | None:
    """Index of the first turn that is not a system prompt."""
    return next((i for i, m in enumerate(turns) if m["role"] != "system"), None)
