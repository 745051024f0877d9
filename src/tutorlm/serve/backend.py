"""Send generation to another OpenAI-compatible server (vLLM, llama.cpp's
``llama-server``, another tutorlm) while the tutor, the notes and the page stay here.

The remote server only sees finished prompts: the mode's system prompt and the
numbered notes are added on this side, so citations work whatever runs the model.
A local tokenizer (the served model's own) counts prompt tokens for the caps and
the notes budget, and counts the reply's tokens as they come: a backend that ignores
``max_tokens`` is cut at it here. ``usage`` comes from the backend when it reports it
and the reply was not cut.

Every read from the backend is bounded by the request's deadline: a backend that
stalls ends the reply there with ``finish_reason: "length"`` (what it sent so far),
and a client that leaves frees its place in the queue at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tutorlm.serve.engine import (
    EngineBusy,
    EngineError,
    Finish,
    GenerationRequest,
    TokenStream,
    past_deadline,
)
from tutorlm.templates import chat_prompt_ids

logger = logging.getLogger(__name__)


def api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> ``http://host:port/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class RemoteEngine:
    """An engine whose replies come from ``POST {backend}/v1/chat/completions``.

    Args:
        url: the backend's address.
        tokenizer: the served model's tokenizer, for prompt token counts.
        model: the backend's model id; None asks ``GET /v1/models`` and takes the first.
        name: the id this server shows its own clients; default ``model``.
        api_key: sent to the backend as ``Authorization: Bearer``.
        max_concurrency: requests in flight to the backend at once.
        max_queue: requests in flight or waiting; more get ``EngineBusy``.
        connect_timeout_s: how long to wait for the backend to accept a connection.
        idle_timeout_s: longest wait for one read from the backend when a request
            has no deadline (with one, the time left until it).
    """

    def __init__(
        self,
        url: str,
        tokenizer,
        *,
        model: str | None = None,
        name: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 16,
        max_queue: int = 64,
        connect_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
    ):
        import httpx

        self.base = api_base(url)
        self.tokenizer = tokenizer
        self.connect_timeout_s, self.idle_timeout_s = connect_timeout_s, idle_timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(idle_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency),
        )
        self.model = model or self._first_model()
        self.name = name or self.model
        self.max_queue = max_queue
        self._pool = ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="tutorlm-backend"
        )
        self._active = 0
        self._lock = threading.Lock()

    def _first_model(self) -> str:
        import httpx

        try:
            reply = self._client.get(f"{self.base}/models")
            reply.raise_for_status()
            return reply.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
            raise EngineError(f"backend {self.base} did not list its models: {error}") from None

    @property
    def load(self) -> int:
        return self._active

    def count_prompt_tokens(self, messages: list[dict]) -> int:
        """Prompt tokens by the local tokenizer's chat template (the backend's may differ slightly)."""
        return len(chat_prompt_ids(self.tokenizer, messages))

    def submit(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None
    ) -> TokenStream:
        """Start the backend request in a worker thread; the reply streams back."""
        stream = TokenStream(loop, request.deadline)
        stream.on_end = self._release
        with self._lock:
            if self._active >= self.max_queue:
                raise EngineBusy(f"server busy: {self._active} requests in progress; retry later")
            self._active += 1
        prompt_tokens = self.count_prompt_tokens(request.messages)
        self._pool.submit(self._run, request, stream, prompt_tokens)
        return stream

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _payload(self, request: GenerationRequest) -> dict:
        payload = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature > 0:
            payload["top_p"] = request.top_p
        if request.stop:
            payload["stop"] = list(request.stop)
        return payload

    def _run(self, request: GenerationRequest, stream: TokenStream, prompt_tokens: int) -> None:
        try:
            stream.push(self._relay(request, stream, prompt_tokens))
        except EngineError as error:
            stream.push(error)
        except Exception as error:  # network trouble: the log says where, the client what
            logger.warning("backend %s failed: %s: %s", self.base, type(error).__name__, error)
            stream.push(EngineError(f"the backend failed ({type(error).__name__})"))

    def _release(self) -> None:
        with self._lock:
            self._active -= 1

    def _timeout(self, request: GenerationRequest):
        """Connect as configured; every later wait (a free connection, each read) ends
        by the request's deadline."""
        import httpx

        wait = self.idle_timeout_s
        if request.deadline is not None:
            wait = max(0.05, request.deadline - time.monotonic())
        return httpx.Timeout(
            connect=min(self.connect_timeout_s, wait), read=wait, write=wait, pool=wait
        )

    def _relay(self, request: GenerationRequest, stream: TokenStream, prompt_tokens: int) -> Finish:
        """Copy the backend's streamed pieces into ``stream``; return how the reply ended."""
        import httpx

        reply_text = _Counted(self.tokenizer, request.max_tokens, stream)
        reason, usage = "length", None
        try:
            with self._client.stream(
                "POST",
                f"{self.base}/chat/completions",
                json=self._payload(request),
                timeout=self._timeout(request),
            ) as reply:
                if reply.status_code != 200:
                    reply.read()
                    raise EngineError(
                        f"the backend answered {reply.status_code}: {_message(reply)}"
                    )
                for line in reply.iter_lines():
                    if stream.cancelled.is_set() or past_deadline(request.deadline):
                        break
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise EngineError(f"the backend failed: {event['error'].get('message')}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        if not reply_text.add((choice.get("delta") or {}).get("content") or ""):
                            return Finish("length", prompt_tokens, request.max_tokens)
                        reason = choice.get("finish_reason") or reason
        except (httpx.ReadTimeout, httpx.PoolTimeout, httpx.WriteTimeout):
            reason, usage = "length", None  # the deadline came first: the reply so far
        if usage and not reply_text.cut:
            return Finish(reason, usage["prompt_tokens"], usage["completion_tokens"])
        return Finish(reason, prompt_tokens, reply_text.tokens())


class _Counted:
    """The reply's text as it streams in, pushed to ``stream`` up to ``max_tokens``
    tokens of the local tokenizer.

    Each piece is counted alone (cheap, and never less than its share of the whole);
    once that estimate reaches the cap, the whole text is counted and, if over it,
    cut at the cap's token.
    """

    def __init__(self, tokenizer, max_tokens: int, stream: TokenStream):
        self.tokenizer, self.max_tokens, self.stream = tokenizer, max_tokens, stream
        self.pieces: list[str] = []
        self.estimate = 0
        self.cut = False

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def add(self, piece: str) -> bool:
        """Push ``piece`` (or the part of it within the cap); False once the cap is reached."""
        if not piece:
            return True
        self.estimate += len(self._ids(piece))
        if self.estimate >= self.max_tokens:
            sent = "".join(self.pieces)
            ids = self._ids(sent + piece)
            if len(ids) >= self.max_tokens:
                kept = self.tokenizer.decode(ids[: self.max_tokens])
                tail = kept[len(sent) :] if kept.startswith(sent) else ""
                if tail:
                    self.pieces.append(tail)
                    self.stream.push(tail)
                self.cut = len(ids) > self.max_tokens
                return False
        self.pieces.append(piece)
        self.stream.push(piece)
        return True

    def tokens(self) -> int:
        return len(self._ids("".join(self.pieces)))


def _message(reply) -> str:
    try:
        return reply.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return reply.text[:300]
