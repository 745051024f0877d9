"""One engine that generates replies for many concurrent requests without mixing them.

Requests go into a queue. A single worker thread owns the model: it takes the
oldest request, lets up to ``max_batch - 1`` compatible ones (same sampling
settings) join it, left-pads their prompts into one batch and runs one
``model.generate``. A streamer routes each step's tokens back to the request they
belong to, row by row, so replies never mix. ``max_batch=1`` serves one request at
a time, which is what a lock around ``generate`` would do; docs/benchmarks.md
compares the two.

Each reply is a :class:`TokenStream` (``stream.py``) that both threads (the terminal
chat) and asyncio code (the HTTP API) can read. :class:`QueuedEngine` holds what every
in-process engine shares (this one, ``stepped.py``, ``llamacpp_engine.py``,
``vllm_serving.py``); all of them and the remote one in ``backend.py`` offer the same
two methods: ``count_prompt_tokens`` and ``submit``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from tutorlm.hardware import engine_threads, other_threads_to_one_core
from tutorlm.serve.stream import EngineBusy, EngineError, Finish, TokenStream
from tutorlm.serve.text import IncrementalText
from tutorlm.templates import chat_prompt_ids

GREEDY_BELOW = 1e-3
"""Temperatures below this decode greedily. Sampling there already picks the top token
but for near ties (a logit gap of 0.01 becomes a factor of e^10), and far below it
``logits / temperature`` overflows float32 to inf and the softmax yields NaN."""

logger = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """One reply to generate.

    Attributes:
        messages: the whole conversation, system prompt and notes included.
        max_tokens: most new tokens.
        temperature: 0 is greedy decoding.
        top_p: nucleus sampling mass (used only when sampling).
        stop: strings that end the reply; the stop string is not returned.
        deadline: ``time.monotonic()`` after which generation stops.
    """

    messages: list[dict]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < GREEDY_BELOW:
            self.temperature = 0.0


@dataclass
class _Row:
    """One request inside a running batch."""

    request: GenerationRequest
    stream: TokenStream
    prompt_ids: list[int]
    text: IncrementalText
    generated: int = 0
    done: bool = False
    reason: str = "length"

    def take(self, token: int, end_ids: set[int]) -> bool:
        """One new token of this reply: streamed as text, or the reason the reply ends
        (an end-of-turn id or a stop string: ``stop``; ``max_tokens``, the deadline or
        a cancelled stream: ``length``). Returns whether the reply is over."""
        if self.done:
            return True
        if self.stream.cancelled.is_set():
            self.close("length")
        elif token in end_ids:
            self.close("stop")
        else:
            self.generated += 1
            piece = self.text.add(token)
            if piece:
                self.stream.push(piece)
            if self.text.stopped:
                self.close("stop")
            elif self.generated >= self.request.max_tokens or past_deadline(self.request.deadline):
                self.close("length")
        return self.done

    def close(self, reason: str) -> None:
        if self.done:
            return
        self.done, self.reason = True, reason
        tail = self.text.flush()
        if tail:
            self.stream.push(tail)
        self.stream.push(Finish(reason, len(self.prompt_ids), self.generated))


@dataclass
class _Job:
    request: GenerationRequest
    stream: TokenStream
    prompt_ids: list[int]
    queued_at: float = field(default_factory=time.monotonic)

    def sampling_key(self) -> tuple[float, float]:
        if self.request.temperature <= 0:
            return (0.0, 1.0)
        return (self.request.temperature, self.request.top_p)


class QueuedEngine:
    """What every in-process engine shares: our template's prompt ids, a cap on the
    requests in progress, and a queue a worker takes them from.

    Args:
        tokenizer: the served model's tokenizer, with the chat template.
        name: the served model id.
        max_queue: requests queued or running; more get ``EngineBusy``.
    """

    def __init__(self, tokenizer, *, name: str, max_queue: int):
        self.tokenizer, self.name, self.max_queue = tokenizer, name, max_queue
        self._pending: collections.deque[_Job] = collections.deque()
        self._active = 0  # requests queued or running
        self._cond = threading.Condition()
        self._closed = False

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered by the chat template, ready for the reply; no
        message's text can produce the template's special tokens."""
        return chat_prompt_ids(self.tokenizer, messages)

    def count_prompt_tokens(self, messages: list[dict]) -> int:
        """Prompt length in tokens, as ``usage.prompt_tokens`` will report it."""
        return len(self.prompt_ids(messages))

    @property
    def load(self) -> int:
        """Requests queued or running now."""
        return self._active

    def _take_place(self) -> None:
        """Count one more request in progress (call with ``_cond`` held).

        Raises:
            EngineBusy: when ``max_queue`` requests are already in progress.
        """
        if self._closed:
            raise EngineError("the engine is shut down")
        if self._active >= self.max_queue:
            raise EngineBusy(f"server busy: {self._active} requests in progress; retry later")
        self._active += 1

    def _release(self) -> None:
        """A reply has ended: its place is free."""
        with self._cond:
            self._active -= 1

    def submit(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None
    ) -> TokenStream:
        """Queue a request; its reply streams into the returned :class:`TokenStream`.

        Raises:
            EngineBusy: when ``max_queue`` requests are already queued or running.
        """
        stream = TokenStream(loop, request.deadline)
        stream.on_end = self._release
        job = _Job(request, stream, self.prompt_ids(request.messages))
        with self._cond:
            self._take_place()
            self._pending.append(job)
            self._cond.notify()
        return stream

    def _wait_for_job(self) -> _Job | None:
        """The oldest queued request, once there is one (call with ``_cond`` held);
        None once the engine is closed, the queued requests then told so."""
        while not self._pending and not self._closed:
            self._cond.wait()
        if self._closed:
            for job in self._pending:
                job.stream.push(EngineError("the engine is shut down"))
            self._pending.clear()
            return None
        return self._pending.popleft()

    def _stop_worker(self, worker: threading.Thread) -> None:
        """Stop the worker after what it is running; queued requests get an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        worker.join(timeout=30)


class LocalEngine(QueuedEngine):
    """A transformers model behind a request queue, decoded in batches by one thread."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str,
        max_batch: int = 8,
        batch_wait_s: float = 0.005,
        max_queue: int = 64,
    ):
        super().__init__(tokenizer, name=name, max_queue=max_queue)
        self.model = model
        self.context_window: int | None = getattr(model.config, "max_position_embeddings", None)
        """Most tokens, prompt and reply together, that the model was built for."""
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """How many batches of each size were decoded (for tests and benchmarks)."""
        self.threads = engine_threads()
        """Torch threads of the worker (``tutorlm.hardware.reserve_cores_for_engine``)."""
        self._threads_set = threading.Event()
        self._worker = threading.Thread(target=self._run, name="tutorlm-engine", daemon=True)
        self._worker.start()
        self._threads_set.wait(timeout=30)
        other_threads_to_one_core()

    def close(self) -> None:
        """Stop the worker after the running batch; queued requests get an error."""
        self._stop_worker(self._worker)

    def _run(self) -> None:
        import torch

        # OpenMP settings are per thread, and torch fixes a thread's own on its first
        # use (a parallel op, get_num_threads) from the last count set anywhere: set
        # it here, and fix it now, before other threads go to one core
        torch.set_num_threads(self.threads)
        torch.get_num_threads()
        self._threads_set.set()
        self._serve_forever()

    def _next_batch(self) -> list[_Job] | None:
        """Wait for a request, then gather compatible ones for up to ``batch_wait_s``."""
        with self._cond:
            first = self._wait_for_job()
            if first is None:
                return None
            batch = [first]
            until = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                match = next(
                    (j for j in self._pending if j.sampling_key() == first.sampling_key()), None
                )
                if match is not None:
                    self._pending.remove(match)
                    batch.append(match)
                    continue
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            return batch

    def _serve_forever(self) -> None:
        while (batch := self._next_batch()) is not None:
            now = time.monotonic()
            runnable = []
            for job in batch:
                if job.stream.cancelled.is_set():
                    job.stream.push(EngineError("cancelled"))
                elif job.request.deadline is not None and now >= job.request.deadline:
                    job.stream.push(EngineBusy("timed out waiting in the queue; retry later"))
                else:
                    runnable.append(job)
            try:
                if runnable:
                    self.batch_sizes[len(runnable)] += 1
                    self._generate(runnable)
            except Exception:  # every request of the batch hears about it, the log says why
                logger.exception("generation failed for a batch of %d", len(runnable))
                for job in runnable:
                    job.stream.push(EngineError("generation failed; the server's log has why"))

    def _generate(self, jobs: list[_Job]) -> None:
        """One left-padded ``generate`` over the batch, streamed row by row."""
        import torch

        from tutorlm.generation import generation_kwargs

        rows = [
            _Row(
                job.request,
                job.stream,
                job.prompt_ids,
                IncrementalText(self.tokenizer, job.request.stop),
            )
            for job in jobs
        ]
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.tensor(
            [[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows]
        )  # (B, T)
        attention_mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows]
        )  # (B, T)
        first = jobs[0].request
        kwargs = generation_kwargs(
            self.tokenizer, max(r.request.max_tokens for r in rows), first.temperature
        )
        if first.temperature > 0:
            kwargs["top_p"] = first.top_p
        device = self.model.device
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                streamer=_RowStreamer(rows, self._end_ids()),
                stopping_criteria=[_RowStopper(rows, width)],
                **kwargs,
            )
        for row in rows:
            row.close("length")

    def _end_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(config_eos, int):
            ids.add(config_eos)
        elif config_eos:
            ids.update(config_eos)
        return {i for i in ids if i is not None}


class _RowStreamer:
    """Receives each decoding step's ``(B,)`` new tokens and routes them to their rows."""

    def __init__(self, rows: list[_Row], end_ids: set[int]):
        self.rows, self.end_ids = rows, end_ids
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt, (B, T)
            self._prompt_seen = True
            return
        for row, token in zip(self.rows, value.tolist(), strict=True):
            row.take(token, self.end_ids)

    def end(self) -> None:
        """Rows still open are closed by the engine after ``generate`` returns."""


class _RowStopper:
    """Tells ``generate`` which rows are finished, so a batch stops when all are.

    ``generate`` asks before it streams the step's tokens, so the row bookkeeping is
    one step behind; the per-row token count is therefore read from ``input_ids``.
    """

    def __init__(self, rows: list[_Row], prompt_width: int):
        self.rows, self.prompt_width = rows, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        produced = input_ids.shape[1] - self.prompt_width
        flags = [
            row.done
            or row.text.stopped
            or row.stream.cancelled.is_set()
            or produced >= row.request.max_tokens
            or past_deadline(row.request.deadline)
            for row in self.rows
        ]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def past_deadline(deadline: float | None) -> bool:
    """Whether a request's deadline (``time.monotonic()``) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def shutdown(engine) -> None:
    """Close an engine if it has anything to close."""
    with contextlib.suppress(Exception):
        engine.close()
