"""The CPU serving engine: continuous batching over the step decoder.

:class:`LocalEngine` hands a batch to ``model.generate`` and waits for its last reply,
so a request that arrives one token after a batch started waits for the whole batch,
and a long prompt stalls everyone while it is read. Here one thread runs
:class:`tutorlm.decoder.StepDecoder` one step at a time and the set of replies
changes between steps:

- a request takes a free KV slot as soon as one exists (``max_batch`` slots);
- each step decodes one token of every reply in flight, in one forward;
- a new prompt is read ``prefill_chunk`` tokens per step, in a forward of its own,
  between the decoding steps: a 700-token page of notes costs the others a few
  short pauses, not one long one;
- a reply that ends (end-of-turn, stop string, ``max_tokens``, deadline, client
  gone) frees its slot at once for the next request.

Same replies batched or alone: a decoding step and a prompt chunk never share a
forward; a prompt is always cut into chunks from its first token, whoever else is
running; and the packed int8/int4 kernels compute each row on its own
(``tests/test_serve_stepped.py`` checks replies batched against alone, token for
token). A float32 model's matmul may round a row differently with the batch size
(oneDNN/MKL pick kernels by shape), so there a greedy reply can differ in a near tie.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from tutorlm.decoder import DECODE_MAX_ROWS, Segment, StepDecoder
from tutorlm.serve.engine import EngineBusy, EngineError, LocalEngine, _Job, _Row
from tutorlm.serve.text import IncrementalText

logger = logging.getLogger(__name__)

DEFAULT_PREFILL_CHUNK = 256
"""Prompt tokens read per step. Bigger chunks read a lone long prompt a little faster;
smaller ones pause the other replies for less time per chunk."""


def unsupported_reason(model) -> str | None:
    """Why the stepped engine cannot serve ``model`` (None when it can)."""
    from tutorlm.decoder import unsupported_reason as decoder_reason

    return decoder_reason(model)


@dataclass
class _Flight:
    """A reply in flight: its row, its KV slot, how far its prompt has been read."""

    row: _Row
    slot: int
    position: int = 0
    next_token: int | None = None
    """The last token chosen, not yet written into the cache (None while prefilling)."""

    @property
    def prefilled(self) -> bool:
        return self.next_token is not None


class SteppedEngine(LocalEngine):
    """A Llama-family model (float or packed int8/int4) served with continuous batching.

    Args:
        model, tokenizer: the loaded model (see :func:`unsupported_reason`).
        name: the served model id.
        max_batch: replies decoded together (KV slots).
        max_queue: requests queued or running; more get ``EngineBusy``.
        prefill_chunk: prompt tokens read per step.
        max_len: positions per slot, prompt and reply; default the model's context,
            at most 4096 (each slot's cache is allocated up front).
        seed: seed of the sampler (temperature > 0).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str,
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_chunk: int | None = None,
        max_len: int | None = None,
        seed: int = 0,
        batch_wait_s: float = 0.0,
    ):
        context = getattr(model.config, "max_position_embeddings", None) or 4096
        self.decoder = StepDecoder(model, slots=max_batch, max_len=max_len or min(context, 4096))
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        self._sampler = torch.Generator().manual_seed(seed)
        super().__init__(
            model,
            tokenizer,
            name=name,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
            max_queue=max_queue,
        )
        self.context_window = self.decoder.max_len

    def _serve_forever(self) -> None:
        flights: list[_Flight] = []
        free = list(range(self.max_batch))
        end_ids = self._end_ids()
        while True:
            with self._cond:
                while not self._pending and not flights and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for job in self._pending:
                        job.stream.push(EngineError("the engine is shut down"))
                    self._pending.clear()
                    for flight in flights:
                        flight.row.stream.push(EngineError("the engine is shut down"))
                    return
                while self._pending and free:
                    flight = self._admit(self._pending.popleft(), free)
                    if flight is not None:
                        flights.append(flight)
            try:
                self._step(flights, end_ids)
            except Exception:  # every reply in flight hears about it, the log says why
                logger.exception("generation failed for %d replies", len(flights))
                for flight in flights:
                    if not flight.row.done:
                        flight.row.done = True
                        flight.row.stream.push(
                            EngineError("generation failed; the server's log has why")
                        )
            for flight in [f for f in flights if f.row.done]:
                flights.remove(flight)
                free.append(flight.slot)

    def _admit(self, job: _Job, free: list[int]) -> _Flight | None:
        """A queued request takes a slot, unless it is gone, late or too long."""
        if job.stream.cancelled.is_set():
            job.stream.push(EngineError("cancelled"))
            return None
        if job.request.deadline is not None and time.monotonic() >= job.request.deadline:
            job.stream.push(EngineBusy("timed out waiting in the queue; retry later"))
            return None
        room = self.decoder.max_len - len(job.prompt_ids)
        if room < 1:
            job.stream.push(
                EngineError(
                    f"prompt of {len(job.prompt_ids)} tokens leaves no room in the engine's "
                    f"{self.decoder.max_len} positions"
                )
            )
            return None
        if job.request.max_tokens > room:  # the reply ends with "length" where the slot ends
            job.request.max_tokens = room
        text = IncrementalText(self.tokenizer, job.request.stop)
        return _Flight(_Row(job.request, job.stream, job.prompt_ids, text), free.pop(0))

    def _step(self, flights: list[_Flight], end_ids: set[int]) -> None:
        """One decoding step of every prefilled reply, then one chunk of one prompt."""
        for flight in flights:
            if flight.row.stream.cancelled.is_set() or _late(flight):
                flight.row.close("length")
        decoding = [f for f in flights if f.prefilled and not f.row.done]
        for start in range(0, len(decoding), DECODE_MAX_ROWS):
            group = decoding[start : start + DECODE_MAX_ROWS]
            logits = self.decoder.forward(
                [Segment(f.slot, f.position, [f.next_token]) for f in group]
            )
            self.batch_sizes[len(group)] += 1
            for flight, row_logits in zip(group, logits, strict=True):
                flight.position += 1
                self._take(flight, row_logits, end_ids)
        reading = next((f for f in flights if not f.prefilled and not f.row.done), None)
        if reading is not None:
            prompt = reading.row.prompt_ids
            chunk = prompt[reading.position : reading.position + self.prefill_chunk]
            logits = self.decoder.forward([Segment(reading.slot, reading.position, chunk)])
            reading.position += len(chunk)
            if reading.position == len(prompt):
                self._take(reading, logits[0], end_ids)

    def _take(self, flight: _Flight, logits: torch.Tensor, end_ids: set[int]) -> None:
        token = choose_token(logits, flight.row.request, self._sampler)
        flight.row.take(token, end_ids)
        flight.next_token = token


def _late(flight: _Flight) -> bool:
    deadline = flight.row.request.deadline
    return deadline is not None and time.monotonic() >= deadline


def choose_token(logits: torch.Tensor, request, generator: torch.Generator) -> int:
    """Greedy (the first of the highest logits) at temperature 0; otherwise a sample
    from ``softmax(logits / temperature)`` cut to the smallest set of tokens whose
    mass reaches ``top_p``."""
    if request.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass above each token
        sorted_probs[before >= request.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
