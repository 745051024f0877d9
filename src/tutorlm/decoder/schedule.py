"""Which tokens go into each forward of the step decoder: one rule for serving and for
bulk generation, so a greedy reply is the same wherever it is generated.

Each :meth:`Scheduler.step` runs one decoding forward over every reply whose prompt
has been read (in groups of at most ``DECODE_MAX_ROWS``), then one forward over the
next chunk of the oldest prompt still being read. A decoding step and a prompt chunk
never share a forward, and a prompt is cut into chunks from its first token whoever
else is running, so each row's arithmetic depends on its own tokens only (for the
packed kernels, which compute each row on its own).
"""

from __future__ import annotations

import torch

from tutorlm.decoder.llama import DECODE_MAX_ROWS, Segment, StepDecoder

DEFAULT_PREFILL_CHUNK = 256
"""Prompt tokens read per step. Bigger chunks read a lone long prompt a little faster;
smaller ones pause the other replies for less time per chunk. Serving and bulk
generation use the same value, so their greedy replies are the same."""


class Reply:
    """One sequence being generated. Subclasses say what a token does (:meth:`accept`)
    and when the reply is over (:attr:`finished`).

    Args:
        prompt_ids: the prompt's token ids.
        temperature: 0 decodes greedily.
        top_p: nucleus mass when sampling.
    """

    def __init__(self, prompt_ids: list[int], temperature: float = 0.0, top_p: float = 1.0):
        self.prompt_ids, self.temperature, self.top_p = prompt_ids, temperature, top_p
        self.slot = -1
        self.position = 0
        """Positions of the slot's cache written so far."""
        self.next_token: int | None = None
        """The last token chosen, not yet written into the cache (None while the
        prompt is being read)."""

    @property
    def reading(self) -> bool:
        return self.next_token is None

    def accept(self, token: int) -> None:
        """A token was chosen for this reply."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        raise NotImplementedError


class Scheduler:
    """Replies in flight on a :class:`StepDecoder`, one KV slot each.

    Args:
        decoder: the step decoder (its ``slots`` bound the replies in flight).
        prefill_chunk: prompt tokens read per step.
        seed: seed of the sampler (temperature > 0).
    """

    def __init__(self, decoder: StepDecoder, *, prefill_chunk: int | None = None, seed: int = 0):
        self.decoder = decoder
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        self.sampler = torch.Generator().manual_seed(seed)
        self.replies: list[Reply] = []
        self._free = list(range(decoder.slots))
        self.decode_sizes: dict[int, int] = {}
        """How many decoding forwards ran with each number of rows."""

    @property
    def has_room(self) -> bool:
        return bool(self._free)

    def add(self, reply: Reply) -> None:
        """Start a reply in a free slot (check :attr:`has_room` first)."""
        if self.room(reply.prompt_ids) < 1:
            raise ValueError(
                f"a prompt of {len(reply.prompt_ids)} tokens leaves no room in "
                f"{self.decoder.max_len} positions"
            )
        reply.slot, reply.position, reply.next_token = self._free.pop(0), 0, None
        self.replies.append(reply)

    def room(self, prompt_ids: list[int]) -> int:
        """New tokens a reply to this prompt can have before its slot is full: callers
        cap the reply there (its last token is chosen, never written)."""
        return self.decoder.max_len - len(prompt_ids)

    def step(self) -> list[Reply]:
        """One decoding forward of every reply past its prompt, then one chunk of the
        oldest prompt being read. Returns the replies that are over (slots freed)."""
        self._release()
        decoding = [r for r in self.replies if not r.reading]
        for start in range(0, len(decoding), DECODE_MAX_ROWS):
            group = decoding[start : start + DECODE_MAX_ROWS]
            logits = self.decoder.forward(
                [Segment(r.slot, r.position, [r.next_token]) for r in group]
            )
            self.decode_sizes[len(group)] = self.decode_sizes.get(len(group), 0) + 1
            for reply, row_logits in zip(group, logits, strict=True):
                reply.position += 1
                self._choose(reply, row_logits)
        reading = next((r for r in self.replies if r.reading), None)
        if reading is not None:
            chunk = reading.prompt_ids[reading.position : reading.position + self.prefill_chunk]
            logits = self.decoder.forward([Segment(reading.slot, reading.position, chunk)])
            reading.position += len(chunk)
            if reading.position == len(reading.prompt_ids):
                self._choose(reading, logits[0])
        return self._release()

    def drop_all(self) -> list[Reply]:
        """Take every reply out (their slots freed), e.g. after a failed forward."""
        dropped, self.replies = self.replies, []
        self._free = list(range(self.decoder.slots))
        return dropped

    def _choose(self, reply: Reply, logits: torch.Tensor) -> None:
        token = choose_token(logits, reply.temperature, reply.top_p, self.sampler)
        reply.next_token = token
        reply.accept(token)

    def _release(self) -> list[Reply]:
        over = [r for r in self.replies if r.finished]
        for reply in over:
            self.replies.remove(reply)
            self._free.append(reply.slot)
        return over


def choose_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """Greedy (the first of the highest logits) at temperature 0; otherwise a sample
    from ``softmax(logits / temperature)`` cut to the smallest set of tokens whose
    mass reaches ``top_p``."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass above each token
        sorted_probs[before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
