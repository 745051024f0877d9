"""The routes of the API and the page, one router per purpose.

Each route finds what it serves on ``request.app.state`` (``tutor``, ``config``,
``api_key``, ``started``), set once by :func:`tutorlm.serve.api.create_app`. The API
key is a dependency of the routers that need it, so no route can forget it:
``/v1/...`` answers 401 with ``WWW-Authenticate: Bearer``, the page asks the browser
for HTTP Basic credentials (any user name, the key as password), and ``/health``
stays open for load balancers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tutorlm.serve.config import ServeConfig
from tutorlm.serve.engine import EngineBusy, EngineError, GenerationRequest
from tutorlm.serve.guard import check_key
from tutorlm.serve.schema import ApiError, parse_request
from tutorlm.serve.tutor import MODE_PROMPTS, ConversationError, Tutor, citation_records

PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "quiz.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# -- the API key, as dependencies ---------------------------------------------------------


async def require_api_key(request: Request) -> None:
    """401 with a Bearer challenge unless the request carries the server's key."""
    check_key(request.app.state.api_key, request.headers.get("authorization", ""), page=False)


async def require_page_key(request: Request) -> None:
    """401 with a Basic challenge (the browser asks for the key) unless it is given."""
    check_key(request.app.state.api_key, request.headers.get("authorization", ""), page=True)


async def served_tutor(request: Request) -> Tutor:
    """The tutor this app serves."""
    return request.app.state.tutor


ServedTutor = Annotated[Tutor, Depends(served_tutor)]


def _check_model(model_id: str, tutor: Tutor) -> None:
    if model_id != tutor.name:
        raise ApiError(
            404,
            f"model {model_id!r} is not served here; this server serves {tutor.name!r}",
            param="model",
            code="model_not_found",
        )


# -- health, models, page -------------------------------------------------------------------

health = APIRouter()
models = APIRouter(dependencies=[Depends(require_api_key)])
page = APIRouter(dependencies=[Depends(require_page_key)])
chat = APIRouter(dependencies=[Depends(require_api_key)])


@health.get("/health")
async def health_check(tutor: ServedTutor):
    """Open to all: liveness, the model, whether notes are on, requests in progress."""
    return {
        "status": "ok",
        "model": tutor.name,
        "rag": tutor.index is not None,
        "in_progress": getattr(tutor.engine, "load", 0),
    }


def _model_card(request: Request) -> dict:
    """OpenAI's model object, plus tutorlm's ``modes`` and default ``mode`` (so the page
    starts in the mode the server was started with)."""
    tutor: Tutor = request.app.state.tutor
    return {
        "id": tutor.name,
        "object": "model",
        "created": request.app.state.started,
        "owned_by": "tutorlm",
        "mode": tutor.mode,
        "modes": list(MODE_PROMPTS),
    }


@models.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [_model_card(request)]}


@models.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, tutor: ServedTutor):
    _check_model(model_id, tutor)
    return _model_card(request)


@page.get("/")
async def page_index():
    return _page_file("index.html")


@page.get("/static/{name}")
async def page_static(name: str):
    return _page_file(name)


def _page_file(name: str) -> Response:
    if name not in PAGE_FILES:
        raise ApiError(404, f"no page file {name!r}")
    content = (resources.files("tutorlm.serve") / "static" / name).read_bytes()
    return Response(content, media_type=PAGE_FILES[name], headers=PAGE_HEADERS)


# -- chat completions -----------------------------------------------------------------------


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


@chat.post("/v1/chat/completions")
async def chat_completions(request: Request, tutor: ServedTutor):
    """One reply, whole or streamed as server-sent events."""
    config: ServeConfig = request.app.state.config
    deadline = time.monotonic() + config.request_timeout_s
    body = parse_request(await request.body())
    _check_model(body.model, tutor)
    max_tokens = body.max_completion_tokens or body.max_tokens or config.default_max_tokens
    if max_tokens > config.max_tokens_limit:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(
            400,
            f"{field}: {max_tokens} is above this server's limit of {config.max_tokens_limit}",
            param=field,
            code="max_tokens_too_large",
        )
    conversation = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.content}
        for m in body.messages
    ]
    loop = asyncio.get_running_loop()

    def start():  # retrieval and tokenization off the event loop
        prepared = tutor.prepare(conversation, mode=body.mode, use_rag=body.rag)
        prompt_tokens = tutor.engine.count_prompt_tokens(prepared.messages)
        if prompt_tokens > config.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {prompt_tokens} tokens (with the tutor's system prompt and "
                f"notes); this server accepts at most {config.max_prompt_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        window = getattr(tutor.engine, "context_window", None)
        if window is not None and prompt_tokens + max_tokens > window:
            raise ApiError(
                400,
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                f"more than the model's context window of {window} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        generation = GenerationRequest(
            messages=prepared.messages,
            max_tokens=max_tokens,
            temperature=config.temperature if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=body.stop,
            deadline=deadline,
        )
        return prepared, tutor.engine.submit(generation, loop)

    try:
        prepared, stream = await asyncio.to_thread(start)
    except ConversationError as error:
        raise ApiError(400, f"messages: {error}", param="messages") from None
    except EngineBusy as error:
        raise ApiError(503, str(error), code="server_busy", headers={"Retry-After": "1"}) from None
    reply_id = f"chatcmpl-{uuid.uuid4().hex}"
    base = {"id": reply_id, "created": int(time.time()), "model": tutor.name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream_events(stream, prepared, base, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    watcher = asyncio.create_task(_cancel_when_gone(request, stream))
    try:
        text = "".join([piece async for piece in stream])
    except EngineBusy as error:
        raise ApiError(503, str(error), code="server_busy", headers={"Retry-After": "1"}) from None
    except EngineError as error:
        raise ApiError(502, str(error), code="generation_failed") from None
    finally:
        watcher.cancel()
        stream.cancel()
    finish = stream.finish
    return {
        **base,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish.reason,
            }
        ],
        "usage": _usage(finish),
        "mode": prepared.mode,
        "citations": citation_records(prepared.sources, text),
    }


async def _cancel_when_gone(request: Request, stream, every_s: float = 0.25) -> None:
    """Stop generating a whole (non-streamed) reply whose client has disconnected.

    A streamed reply notices by itself: sending to a closed connection ends it.
    """
    while stream.finish is None:
        if await request.is_disconnected():
            stream.cancel()
            return
        await asyncio.sleep(every_s)


def _usage(finish) -> dict:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


async def _stream_events(stream, prepared, base: dict, include_usage: bool):
    """OpenAI's chunk sequence: role, content pieces, the finish, usage, ``[DONE]``.

    The first and the last chunk carry ``citations``: first the notes given (so a
    page can show them at once), last the same notes marked with what was cited.
    An error after the stream has started is sent as an ``error`` event.
    """

    def chunk(delta: dict, finish_reason=None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _sse({**base, "object": "chat.completion.chunk", "choices": [choice], **extra})

    pieces: list[str] = []
    try:
        yield chunk(
            {"role": "assistant", "content": ""},
            mode=prepared.mode,
            citations=citation_records(prepared.sources, ""),
        )
        async for piece in stream:
            pieces.append(piece)
            yield chunk({"content": piece})
        text = "".join(pieces)
        yield chunk(
            {},
            stream.finish.reason,
            citations=citation_records(prepared.sources, text),
        )
        if include_usage:
            yield _sse(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": _usage(stream.finish),
                }
            )
    except EngineError as error:
        code = "server_busy" if isinstance(error, EngineBusy) else "generation_failed"
        yield _sse(
            {"error": {"message": str(error), "type": "server_error", "param": None, "code": code}}
        )
    finally:
        stream.cancel()
    yield _sse("[DONE]")


# -- the quiz tab ---------------------------------------------------------------------------
#
# ``tutorlm serve --quiz quiz.jsonl``: the page asks the quiz's questions one at a time;
# each answer is graded here by the quiz's grader (the tutor tasks' rules), and the
# finished quiz is scored and, with ``--quiz-results``, saved per student in a local
# SQLite file. The routes sit under /v1/ so that they get the API key, the JSON-only
# rule and the per-client limit of the guard like every other API route.

quiz = APIRouter(dependencies=[Depends(require_api_key)])


class QuizAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)
    answer: str = Field(max_length=2000)


class QuizFinish(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student: str = Field(default="", max_length=100)
    answers: list[QuizAnswer] = Field(max_length=1000)


def attach_quiz(app, questions, name: str, results=None) -> None:
    """Serve ``questions`` (``tutorlm.quiz.records.Question``) in the page's quiz tab;
    with ``results`` (a SQLite path) a finished quiz is saved under the student's name."""
    app.state.quiz = {q.id: q for q in questions}
    app.state.quiz_name, app.state.quiz_results = name, results


def _served_quiz(request: Request) -> dict:
    questions = getattr(request.app.state, "quiz", None)
    if not questions:
        raise ApiError(404, "no quiz is served here (start the server with --quiz FILE)")
    return questions


def _parse(model: type[BaseModel], body: bytes):
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None


def _question_of(questions: dict, question_id: str):
    if question_id not in questions:
        raise ApiError(404, f"no question {question_id!r} in this quiz", param="id")
    return questions[question_id]


@quiz.get("/v1/quiz")
async def quiz_questions(request: Request):
    """The quiz's questions, without their answers."""
    questions = _served_quiz(request)
    return {
        "name": request.app.state.quiz_name,
        "saving": request.app.state.quiz_results is not None,
        "questions": [
            {
                "id": q.id,
                "kind": q.kind,
                "question": q.question,
                "choices": q.choices if q.kind == "mcqa" else [],
                "file": q.file,
                "section": q.section,
            }
            for q in questions.values()
        ],
    }


@quiz.post("/v1/quiz/answer")
async def quiz_answer(request: Request):
    """One answer graded, with the explanation and its source."""
    from tutorlm.quiz.grade import grade

    body = _parse(QuizAnswer, await request.body())
    question = _question_of(_served_quiz(request), body.id)
    return grade(question, body.answer).to_dict()


@quiz.post("/v1/quiz/finish")
async def quiz_finish(request: Request):
    """The score and the sections to re-read; saved when the server keeps results."""
    from tutorlm.quiz.grade import grade, summarize
    from tutorlm.quiz.store import save_attempt

    body = _parse(QuizFinish, await request.body())
    questions = _served_quiz(request)
    graded = [grade(_question_of(questions, a.id), a.answer) for a in body.answers]
    result = summarize(graded).to_dict() | {"saved": None}
    results = request.app.state.quiz_results
    if results is not None and body.student.strip() and graded:
        name = request.app.state.quiz_name
        attempt = await asyncio.to_thread(save_attempt, results, body.student, name, graded)
        result["saved"] = attempt
    return result
