"""The CPU serving engine: continuous batching over the step decoder.

:class:`LocalEngine` hands a batch to ``model.generate`` and waits for its last reply,
so a request that arrives one token after a batch started waits for the whole batch,
and a long prompt stalls everyone while it is read. Here one thread drives a
:class:`tutorlm.decoder.Scheduler` one step at a time and the set of replies changes
between steps:

- a request takes a free KV slot as soon as one exists (``max_batch`` slots);
- each step decodes one token of every reply in flight, in one forward;
- a new prompt is read ``prefill_chunk`` tokens per step, in a forward of its own,
  between the decoding steps: a 700-token page of notes costs the others a few
  short pauses, not one long one;
- a reply that ends (end-of-turn, stop string, ``max_tokens``, deadline, client
  gone) frees its slot at once for the next request.

Same replies batched or alone, and the same as the evaluation's: the scheduler's rule
(``tutorlm.decoder.schedule``) is the one bulk generation uses, and the packed
int8/int4 kernels compute each row on its own (``tests/test_serve_stepped.py`` checks
replies batched against alone, token for token). A float32 model's matmul may round a
row differently with the batch size (oneDNN/MKL pick kernels by shape), so there a
greedy reply can differ in a near tie.
"""

from __future__ import annotations

import logging

from tutorlm.decoder import Reply, Scheduler, StepDecoder
from tutorlm.decoder import unsupported_reason as unsupported_reason  # engines.py asks it
from tutorlm.serve.engine import (
    EngineBusy,
    EngineError,
    LocalEngine,
    _Job,
    _Row,
    past_deadline,
)
from tutorlm.serve.text import IncrementalText

logger = logging.getLogger(__name__)


class _Flight(Reply):
    """A request's reply in flight: tokens go to its row, which streams them."""

    def __init__(self, row: _Row, end_ids: set[int]):
        super().__init__(row.prompt_ids, row.request.temperature, row.request.top_p)
        self.row, self.end_ids = row, end_ids

    def accept(self, token: int) -> None:
        self.row.take(token, self.end_ids)

    @property
    def finished(self) -> bool:
        row = self.row
        if not row.done and (row.stream.cancelled.is_set() or past_deadline(row.request.deadline)):
            row.close("length")
        return row.done


class SteppedEngine(LocalEngine):
    """A Llama-family model (float or packed int8/int4) served with continuous batching.

    Args:
        model, tokenizer: the loaded model (see :func:`unsupported_reason`).
        name: the served model id.
        max_batch: replies decoded together (KV slots).
        max_queue: requests queued or running; more get ``EngineBusy``.
        prefill_chunk: prompt tokens read per step (default: the evaluation's).
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
        decoder = StepDecoder(model, slots=max_batch, max_len=max_len or min(context, 4096))
        self.scheduler = Scheduler(decoder, prefill_chunk=prefill_chunk, seed=seed)
        super().__init__(
            model,
            tokenizer,
            name=name,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
            max_queue=max_queue,
        )
        self.batch_sizes = self.scheduler.decode_sizes  # rows of each decoding forward
        self.context_window = decoder.max_len

    def _serve_forever(self) -> None:
        scheduler, end_ids = self.scheduler, self._end_ids()
        while True:
            with self._cond:
                while not self._pending and not scheduler.replies and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._fail([*self._pending, *scheduler.drop_all()], "the engine is shut down")
                    self._pending.clear()
                    return
                while self._pending and scheduler.has_room:
                    flight = self._admit(self._pending.popleft(), end_ids)
                    if flight is not None:
                        scheduler.add(flight)
            try:
                scheduler.step()
            except Exception:  # every reply in flight hears about it, the log says why
                logger.exception("generation failed for %d replies", len(scheduler.replies))
                self._fail(scheduler.drop_all(), "generation failed; the server's log has why")

    @staticmethod
    def _fail(items: list, message: str) -> None:
        for item in items:
            row = item.row if isinstance(item, _Flight) else item
            if not getattr(row, "done", False):
                row.stream.push(EngineError(message))

    def _admit(self, job: _Job, end_ids: set[int]) -> _Flight | None:
        """A queued request takes a slot, unless it is gone, late or too long."""
        if job.stream.cancelled.is_set():
            job.stream.push(EngineError("cancelled"))
            return None
        if past_deadline(job.request.deadline):
            job.stream.push(EngineBusy("timed out waiting in the queue; retry later"))
            return None
        room = self.scheduler.room(job.prompt_ids)
        if room < 1:
            job.stream.push(
                EngineError(
                    f"prompt of {len(job.prompt_ids)} tokens leaves no room in the engine's "
                    f"{self.scheduler.decoder.max_len} positions"
                )
            )
            return None
        job.request.max_tokens = min(job.request.max_tokens, room)  # then "length"
        text = IncrementalText(self.tokenizer, job.request.stop)
        return _Flight(_Row(job.request, job.stream, job.prompt_ids, text), end_ids)
