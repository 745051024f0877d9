"""Where the judge runs: an OpenAI-compatible endpoint, or a local model in a pinch.

Both answer many chats at once through one method, ``complete(chats, temperature=)``;
:func:`tutorlm.evaluate.judge.judge_pairs` needs nothing else of them. The endpoint is
spoken to with plain ``httpx`` (a core dependency; the ``openai`` package is a dev
extra), without streaming: a verdict is short and read whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from tutorlm.evaluate.judge import JudgeConfig, JudgeError


class ChatBackend(Protocol):
    """Answers many chats at once; what the judge needs of a model."""

    model: str
    where: str
    """The endpoint's URL, or ``local`` for a model run here."""

    def complete(self, chats: Sequence[list[dict]], *, temperature: float) -> list[str]:
        """One reply text per chat, in order."""
        ...


def _api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> ``http://host:port/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class EndpointBackend:
    """``POST {url}/v1/chat/completions`` (no streaming), with retries and concurrency.

    Args:
        config: the endpoint, model, key variable, timeout, retries and concurrency.
        transport: an ``httpx`` transport to use instead of the network (tests).
    """

    def __init__(self, config: JudgeConfig, *, transport=None):
        import httpx

        if not config.url:
            raise JudgeError("an endpoint judge needs a url")
        self.config = config
        self.where = _api_base(config.url)
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise JudgeError(f"the judge's API key variable ${config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(max_connections=config.concurrency),
            transport=transport,
        )
        self.model = config.model or self._first_model()

    def _first_model(self) -> str:
        reply = self._request("GET", f"{self.where}/models")
        try:
            return reply["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.where}/models listed no model: {reply}") from None

    def _request(self, method: str, url: str, body: dict | None = None) -> dict:
        """One request, retried with doubling waits on timeouts, lost connections,
        429 and 5xx; any other error status fails at once (a wrong model or key will
        not mend by waiting)."""
        import httpx

        problem = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                reply = self._client.request(method, url, json=body)
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            if reply.status_code == 429 or reply.status_code >= 500:
                problem = f"status {reply.status_code}: {reply.text[:200]}"
                continue
            if reply.status_code != 200:
                raise JudgeError(
                    f"the judge at {url} answered {reply.status_code}: {reply.text[:300]}"
                )
            try:
                return reply.json()
            except ValueError:
                raise JudgeError(f"the judge at {url} sent no JSON: {reply.text[:200]}") from None
        raise JudgeError(
            f"the judge at {url} failed {self.config.retries + 1} times; last: {problem}"
        )

    def _one(self, chat: list[dict], temperature: float) -> str:
        body = {
            "model": self.model,
            "messages": chat,
            "max_tokens": self.config.max_tokens,
            "temperature": temperature,
        }
        reply = self._request("POST", f"{self.where}/chat/completions", body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge's reply has no message: {str(reply)[:300]}") from None

    def complete(self, chats: Sequence[list[dict]], *, temperature: float) -> list[str]:
        with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="judge") as pool:
            return list(pool.map(lambda chat: self._one(chat, temperature), chats))

    def close(self) -> None:
        self._client.close()


class LocalBackend:
    """A model spec run here through :func:`tutorlm.bulk.open_generator` (greedy first;
    seeded sampling for re-asks)."""

    def __init__(self, config: JudgeConfig, *, seed: int = 0, progress: bool = False):
        if not config.model:
            raise JudgeError("a local judge needs a model spec (judge model)")
        self.config, self.model, self.where, self.seed = config, config.model, "local", seed
        self.progress = progress
        self._generator = None
        self._asks = 0

    def complete(self, chats: Sequence[list[dict]], *, temperature: float) -> list[str]:
        from tutorlm.bulk import Sampling, open_generator

        if self._generator is None:
            self._generator = open_generator(
                self.model, device=self.config.device, progress=self.progress
            )
        sampling = Sampling(
            max_new_tokens=self.config.max_tokens,
            temperature=temperature,
            seed=self.seed + self._asks,
        )
        self._asks += 1
        return [g.text for g in self._generator.generate(list(chats), sampling, desc="judge")]

    def close(self) -> None:
        self._generator = None


def open_backend(config: JudgeConfig, *, transport=None, progress: bool = False) -> ChatBackend:
    """The endpoint when ``config.url`` is set, else the local model."""
    if config.url:
        return EndpointBackend(config, transport=transport)
    return LocalBackend(config, progress=progress)
