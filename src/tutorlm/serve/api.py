"""The OpenAI-compatible HTTP API and the chat page, as one FastAPI app.

Routes: ``POST /v1/chat/completions`` (streamed as server-sent events or whole),
``GET /v1/models``, ``GET /health`` and the page at ``/``, one router each in
``tutorlm.serve.routes`` (the API key is their dependency). The request and reply
shapes are OpenAI's, so the official ``openai`` client works unchanged; tutorlm
adds ``mode`` and ``rag`` to requests and ``citations`` to replies.

Every error is an OpenAI-shaped ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status that says what to fix: bad JSON, a wrong type, an unknown field
or model, a cap exceeded. Bodies are read with a size cap and a time limit before
any parsing, so neither a huge nor a slow body can hold the server.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from tutorlm.serve import routes
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.schema import ApiError
from tutorlm.serve.tutor import Tutor


class BodyLimit:
    """ASGI middleware: read the whole body first, within a size cap and a time limit.

    A body over ``max_bytes`` gets 413 (from ``Content-Length`` before reading, or
    while reading a chunked one); a body that takes longer than ``timeout_s`` to
    arrive gets 408. The app then sees the body as if it had just arrived.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = ApiError(
                413, self._too_large(declared.decode("latin-1")), code="body_too_large"
            )
            return await error.response()(scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read(receive), timeout=self.timeout_s)
        except ApiError as error:
            return await error.response()(scope, receive, send)
        except TimeoutError:
            error = ApiError(408, f"request body not received within {self.timeout_s:g} s")
            return await error.response()(scope, receive, send)
        if body is None:  # the client left
            return None
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _too_large(self, size: str) -> str:
        return f"request body is {size} bytes; this server accepts at most {self.max_bytes}"

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise ApiError(413, self._too_large(f"over {size}"), code="body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def create_app(
    tutor: Tutor, config: ServeConfig | None = None, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app serving ``tutor``.

    Args:
        tutor: the tutor (engine, notes, modes) to serve.
        config: caps and defaults; ``ServeConfig()`` when None.
        api_key: when set, every route but ``/health`` requires it.
    """
    config = config or ServeConfig()
    app = FastAPI(title="tutorlm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tutor, app.state.config, app.state.api_key = tutor, config, api_key
    app.state.started = int(time.time())
    for router in (routes.health, routes.models, routes.page, routes.chat):
        app.include_router(router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {error.detail}"
        return ApiError(
            error.status_code, message, headers=getattr(error, "headers", None)
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        return ApiError(500, f"internal error: {type(error).__name__}: {error}").response()

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s)
    return app
