"""The chat completion request as this server accepts it, and its error replies.

Validation is strict (``"5"`` is not an int) and closed (unknown fields are refused,
naming the field), so a client learns at once what this server does not do rather
than getting a reply that silently ignored part of its request.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

UNSUPPORTED = {
    "seed": "per-request seeds cannot be honoured in a shared batch",
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "logprobs": "log-probabilities are not returned",
    "top_logprobs": "log-probabilities are not returned",
    "response_format": "structured output is not supported",
    "logit_bias": "logit bias is not supported",
    "presence_penalty": "penalties are not supported",
    "frequency_penalty": "penalties are not supported",
}
"""OpenAI request fields this server rejects, and why (rather than silently ignoring them)."""


class ApiError(Exception):
    """An error reply: HTTP status, a message that says what to fix, and the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


class TextPart(BaseModel):
    """One part of a message given as a list of parts; only text is accepted."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One turn; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: Any
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text(cls, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            try:
                return "".join(TextPart.model_validate(part).text for part in value)
            except ValidationError:
                pass
        raise ValueError('must be a string or a list of {"type": "text", "text": ...} parts')


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat completion request that this server honours."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Any = ()
    n: int = 1
    user: str | None = None
    mode: Literal["tutor", "hint"] | None = None
    """tutorlm: the tutoring mode of this reply."""
    rag: bool = True
    """tutorlm: retrieve and cite course notes (when the server has an index)."""

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not (isinstance(value, list) and all(isinstance(s, str) and s for s in value)):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(value) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(value)}")
        return tuple(value)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported (one reply per request)")
        return value


def _dotted(location: tuple) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    """One line per problem, naming the field, e.g. ``messages[0].role: Input should be ...``."""
    lines, first_param = [], None
    for item in error.errors()[:3]:
        location = _dotted(tuple(item["loc"]))
        first_param = first_param or location
        if item["type"] == "extra_forbidden":
            field = str(item["loc"][-1])
            why = UNSUPPORTED.get(field, "not a chat completion field this server knows")
            lines.append(f"unsupported field '{location}': {why}")
        else:
            lines.append(f"{location}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines), first_param


MAX_DEPTH = 16
"""Deepest nesting of objects and lists a request body may have (a chat request needs 5)."""

MAX_INT_DIGITS = 20
"""Longest integer literal parsed as an integer; a longer one is read as a float (an
unbounded one as ``inf``), so that validation names its field instead of Python's
integer-conversion limit failing the whole parse."""


def _parse_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else float(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_tree(data: Any) -> None:
    """Walk the parsed body without recursion: bounded depth, and every string valid
    Unicode (JSON's ``\\ud800`` escape yields a lone surrogate no tokenizer accepts)."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    while stack:
        value, location, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise ApiError(
                    400,
                    f"{_dotted(location) or 'request body'}: nested deeper than {MAX_DEPTH} levels",
                    param=_dotted(location) or None,
                    code="invalid_value",
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, location)
                stack.append((item, (*location, key), depth + 1))
        elif isinstance(value, str):
            _check_text(value, location)


def _check_text(text: str, location: tuple) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        where = _dotted(location) or "request body"
        bad = text[error.start]
        raise ApiError(
            400,
            f"{where}: contains a lone surrogate (\\u{ord(bad):04x}), which is not Unicode text",
            param=_dotted(location) or None,
            code="invalid_value",
        ) from None


def parse_request(body: bytes) -> ChatCompletionRequest:
    """The request body as a validated request, or an :class:`ApiError` (400) saying why."""
    try:
        data = json.loads(body, parse_int=_parse_int, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(
            400, f"request body: nested deeper than {MAX_DEPTH} levels", code="invalid_json"
        ) from None
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(
            400, f"request body is not valid JSON: {error}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    _check_tree(data)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        message, param = _validation_message(error)
        raise ApiError(400, message, param=param, code="invalid_value") from None
