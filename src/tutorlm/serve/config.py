"""The ``serve`` section of a recipe: settings of the serving stage (chat and HTTP API).

Every cap here exists so that one client cannot take the server down: a request
above a cap gets a 4xx that names the cap, never a 500 or a hang.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["tutor", "hint"]


class ServeConfig(BaseModel):
    """Settings of the serving stage."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; any other address requires an API key."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    served_name: str | None = None
    """The model id clients send, ``/v1/models`` lists, every reply's ``model`` field
    carries and the page and chat show. Default: ``<recipe name>-M2`` (or ``-M1``,
    ``-M0``) when served from a run; else ``<run>-M2`` for a run's ``dpo/merged``, a
    directory's name (the nearest folder above it for a generic one: ``merged``,
    ``model`` ...), the bundled model's name or the hub id
    (``tutorlm.serve.commands.served_name``)."""
    mode: Mode = "tutor"
    """Default tutoring mode: ``tutor`` explains step by step, ``hint`` guides the
    student toward the answer without giving it. A request may pick the other."""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """Default sampling temperature; 0 is greedy decoding."""
    default_max_tokens: int = Field(default=256, ge=1)
    """New tokens per reply when a request names no ``max_tokens``."""
    max_tokens_limit: int = Field(default=1024, ge=1)
    """Largest ``max_tokens`` a request may ask for (400 above it)."""
    max_prompt_tokens: int = Field(default=2048, ge=16)
    """Longest prompt, in tokens, after the system prompt and retrieved notes are
    added (400 above it). Small models lose the thread in long contexts anyway."""
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    """Largest request body (413 above it)."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """Time a client has to send its whole request body (408 after it), so that a
    slow or stalled upload cannot hold a connection."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """Time a connection has to send a request's headers, from when it opens or its
    previous reply ends; then it is closed. A client that opens connections and
    never finishes them (slowloris) holds each at most this long."""
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    """Largest request line and headers together (400 above it)."""
    max_connections: int = Field(default=128, ge=1)
    """Open connections at once; a connection beyond it is closed as soon as it is
    accepted. Keep it above ``max_queue``: a waiting or streaming request holds one."""
    max_requests_per_key: int = Field(default=16, ge=1)
    """Requests in progress at once per API key (per client address on a keyless
    server); more get a 429 with ``Retry-After``, so one client cannot fill the queue."""
    request_timeout_s: float = Field(default=120.0, gt=0)
    """Wall-clock time per request, queueing included. Generation stops at this
    deadline (the reply ends with ``finish_reason: "length"``); a request still
    queued then gets a 503."""
    max_batch: int = Field(default=8, ge=1)
    """Requests decoded together in one batch by the local engine. 1 serves them
    one at a time (the same as a lock); see docs/benchmarks.md for the measured gain."""
    batch_wait_ms: float = Field(default=5.0, ge=0)
    """How long the engine waits for more requests to join a batch that is not full."""
    max_queue: int = Field(default=64, ge=1)
    """Requests waiting or running at once; more get a 503 with ``Retry-After``."""
    rag_k: int | None = Field(default=None, ge=1)
    """Notes retrieved per question; None uses the recipe's ``rag.k``."""
    rag_budget_tokens: int | None = Field(default=None, ge=32)
    """Most prompt tokens the notes may take; None uses ``rag.budget_tokens``."""

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ServeConfig:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) is above "
                f"max_tokens_limit ({self.max_tokens_limit})"
            )
        return self
