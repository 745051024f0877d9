"""A reply's stream of text pieces, how it ended, and the errors an engine reports: what
every engine (in-process or remote) hands its readers, sync (the terminal chat) or asyncio
(the HTTP API)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from tutorlm.errors import TutorlmError

CONSUMER_GRACE_S = 10.0
"""Extra time a reader waits past a request's deadline before giving up on the engine."""


class EngineError(TutorlmError):
    """Generation failed for a reason the client can be told."""


class EngineBusy(EngineError):
    """The queue is full, or a request waited past its deadline (HTTP 503)."""


@dataclass(frozen=True)
class Finish:
    """How a reply ended and what it cost, in tokens of the model's tokenizer.

    ``reason`` is ``"stop"`` (end-of-turn token or a stop string) or ``"length"``
    (``max_tokens`` or the request's deadline reached).
    """

    reason: str
    prompt_tokens: int
    completion_tokens: int


class TokenStream:
    """The pieces of one reply, pushed by an engine thread, read by sync or async code.

    An async reader passes its event loop at creation: pieces are then handed over
    with ``call_soon_threadsafe`` and no thread is parked per request. After the
    stream is read to its end, ``finish`` holds the :class:`Finish`.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None = None, deadline: float | None = None
    ):
        self._loop = loop
        self._deadline = deadline
        self._sync: queue.SimpleQueue = queue.SimpleQueue()
        self._async: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self.cancelled = threading.Event()
        self.finish: Finish | None = None
        self.first_token_at: float | None = None
        self.on_end = None
        """Called once: when the last item is pushed, or when the stream is cancelled,
        whichever comes first (a client that leaves frees its place in the queue at
        once, even while the engine is still blocked on its behalf)."""
        self._ended = False
        self._end_lock = threading.Lock()

    def push(self, item: str | Finish | BaseException) -> None:
        """Called by the engine: text pieces, then one ``Finish`` or exception."""
        if isinstance(item, str):
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
        else:
            self._end()
        if self._loop is None:
            self._sync.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, item)
        except RuntimeError:  # the reader's loop is closed: nobody is listening any more
            self.cancelled.set()

    def cancel(self) -> None:
        """Stop generating this reply (the client went away, or it has been read)."""
        self.cancelled.set()
        self._end()

    def _end(self) -> None:
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        if self.on_end is not None:
            self.on_end()

    def _wait_s(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.1, self._deadline + CONSUMER_GRACE_S - time.monotonic())

    def _take(self, item) -> str | None:
        if isinstance(item, Finish):
            self.finish = item
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def _stalled(self) -> EngineError:
        """Give up on a request whose engine sent nothing in time (and free its slot)."""
        self.cancel()
        return EngineError("the engine stopped answering this request")

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                piece = self._take(self._sync.get(timeout=self._wait_s()))
            except queue.Empty:
                raise self._stalled() from None
            if piece is None:
                return
            yield piece

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            try:
                item = await asyncio.wait_for(self._async.get(), timeout=self._wait_s())
            except TimeoutError:
                raise self._stalled() from None
            if (piece := self._take(item)) is None:
                return
            yield piece

    def text(self) -> str:
        """Read the whole reply (blocking; sync streams only)."""
        return "".join(self)
