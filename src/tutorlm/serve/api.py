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

import logging
import time

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from tutorlm.serve import routes
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.guard import RequestGuard
from tutorlm.serve.schema import ApiError
from tutorlm.serve.tutor import Tutor

INTERNAL_ERROR = "internal error; the server's log has the details"


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
    for router in (routes.health, routes.models, routes.page, routes.chat, routes.quiz):
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
        # the client learns nothing internal; the log (uvicorn's) gets the traceback
        logging.getLogger(__name__).error("%s %s failed", request.method, request.url.path)
        return ApiError(500, INTERNAL_ERROR, code="internal_error").response()

    app.add_middleware(RequestGuard, config=config, api_key=api_key)
    return app
