"""Hardening of the HTTP server (issue 17): malformed bodies are 400s naming the field,
an unexpected failure is a 500 that says nothing internal, the key is checked before
the body is read, the content type and ``Host`` are checked, and connections are
bounded in number, header time and requests per key. Real sockets on 127.0.0.1,
every wait bounded; a scripted engine stands in for the model."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from serve_support import HeldEngine, ScriptedEngine

from tutorlm.serve.api import INTERNAL_ERROR, create_app
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.server import BackgroundServer
from tutorlm.serve.tutor import Tutor

KEY = "guard-key"
QUESTION = [{"role": "user", "content": "What is momentum?"}]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


@pytest.fixture
def engine(tokenizer):
    return ScriptedEngine(tokenizer, ["Mass times ", "velocity."], name="tiny")


def serve(engine, api_key=None, **settings):
    return BackgroundServer(create_app(Tutor(engine), ServeConfig(**settings), api_key=api_key))


def post(url: str, content: str | bytes, headers=None) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", content=content, headers={**JSON, **(headers or {})}
    )


def body(**fields) -> str:
    return json.dumps({"model": "tiny", "messages": QUESTION, **fields})


MALFORMED = [
    (
        body()[:-1] + ', "max_tokens": 1' + "0" * 5000 + "}",
        "max_tokens",
        "max_tokens: Input should be a valid integer",
    ),
    (
        body(messages=[{"role": "user", "content": "hi \ud800"}]),
        "messages[0].content",
        "messages[0].content: contains a lone surrogate (\\ud800), which is not Unicode text",
    ),
    ("[" * 100_000, None, "request body: nested deeper than 16 levels"),
    (
        body()[:-1] + ', "stop": ' + "[" * 40 + "]" * 40 + "}",
        "stop" + "[0]" * 15,
        "stop" + "[0]" * 15 + ": nested deeper than 16 levels",
    ),
    (
        body()[:-1] + ', "temperature": NaN}',
        None,
        "request body is not valid JSON: NaN is not a JSON number",
    ),
    (
        body()[:-1] + ', "temperature": 1e999}',
        "temperature",
        "temperature: Input should be less than or equal to 2",
    ),
]


@pytest.mark.parametrize(("content", "param", "message"), MALFORMED)
def test_a_malformed_body_is_a_400_naming_the_field(engine, content, param, message):
    with serve(engine, max_body_bytes=256 * 1024) as running:
        reply = post(running.url, content)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["message"], error["param"]) == (message, param)
    assert engine.requests == []


class FailingEngine(ScriptedEngine):
    def count_prompt_tokens(self, messages):
        raise RuntimeError("secret detail at /srv/tutorlm/weights")


def test_an_unexpected_failure_is_a_500_that_says_nothing_internal(tokenizer):
    with serve(FailingEngine(tokenizer, ["x"], name="tiny")) as running:
        reply = post(running.url, body())
    assert reply.status_code == 500
    assert reply.json()["error"] == {
        "message": INTERNAL_ERROR,
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }


def _exchange(port: int, request: bytes, timeout_s: float = 10) -> str:
    """Send ``request`` on a fresh connection; everything read until the server closes
    it or ``timeout_s`` passes without data."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as raw:
        raw.sendall(request)
        data = b""
        try:
            while chunk := raw.recv(4096):
                data += chunk
                if b"\r\n\r\n" in data:
                    break
        except TimeoutError:
            pass
    return data.decode("latin-1")


def test_a_client_without_the_key_gets_401_before_sending_its_body(engine):
    with serve(engine, api_key=KEY, body_timeout_s=30) as running:
        started = time.monotonic()
        answer = _exchange(
            running.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        waited = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 401"), answer
    assert waited < 10  # not after the 30 s body limit


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_the_api_accepts_only_json_bodies(engine, content_type):
    with serve(engine) as running:
        reply = post(running.url, body(), headers={"Content-Type": content_type})
        good = post(
            running.url, body(), headers={"Content-Type": "application/json; charset=utf-8"}
        )
    assert reply.status_code == 415
    assert reply.json()["error"]["message"] == (
        f"Content-Type {content_type or '(none)'!r}: this API accepts only application/json"
    )
    assert good.status_code == 200
    assert len(engine.requests) == 1


def test_a_keyless_server_answers_only_to_its_own_names(engine):
    with serve(engine) as running:
        port = running.port
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert post(running.url, body(), headers={"Host": name}).status_code == 200, name
        rebound = post(running.url, body(), headers={"Host": f"evil.example:{port}"})
        page = httpx.get(f"{running.url}/", headers={"Host": "evil.example"})
    assert rebound.status_code == 400 and page.status_code == 400
    assert rebound.json()["error"]["message"] == (
        f"Host 'evil.example:{port}' is not a name of this server; a server without an API "
        "key answers only to 127.0.0.1, ::1, localhost"
    )
    assert len(engine.requests) == 4


def test_a_server_with_a_key_checks_the_key_not_the_host(engine):
    with serve(engine, api_key=KEY) as running:
        reply = post(
            running.url, body(), headers={"Host": "tutor.example", "Authorization": f"Bearer {KEY}"}
        )
    assert reply.status_code == 200


def test_requests_in_progress_per_key_are_capped(tokenizer):
    held = HeldEngine(tokenizer, ["Thinking"], name="tiny")
    auth = {"Authorization": f"Bearer {KEY}", **JSON}
    with serve(held, api_key=KEY, max_requests_per_key=1) as running:
        url = f"{running.url}/v1/chat/completions"
        with httpx.stream("POST", url, content=body(stream=True), headers=auth) as first:
            lines = first.iter_lines()
            next(lines)  # in progress (the iterator is kept: dropping it closes the stream)
            second = httpx.post(url, content=body(), headers=auth)
            health = httpx.get(f"{running.url}/health")
            held.release.set()
            rest = list(lines)
        third = httpx.post(url, content=body(), headers=auth)
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["error"]["message"] == (
        "1 requests of this client are in progress; this server allows 1 at once"
    )
    assert [line for line in rest if line][-1] == "data: [DONE]"
    assert health.status_code == 200 and third.status_code == 200


def _closed_by_server(raw: socket.socket) -> bool:
    """Whether the server closes ``raw`` (within its timeout) without answering."""
    try:
        return raw.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_unfinished_headers_and_silent_connections_are_closed(engine):
    with serve(engine, header_timeout_s=0.5) as running:
        connections = [
            socket.create_connection(("127.0.0.1", running.port), timeout=10) for _ in range(5)
        ]
        try:
            for raw in connections[1:]:
                raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow:")
            assert all(_closed_by_server(raw) for raw in connections)
        finally:
            for raw in connections:
                raw.close()
        kept_alive = httpx.Client()
        first = kept_alive.post(f"{running.url}/v1/chat/completions", content=body(), headers=JSON)
        second = kept_alive.post(f"{running.url}/v1/chat/completions", content=body(), headers=JSON)
        kept_alive.close()
    assert first.status_code == second.status_code == 200  # a finished request is not cut


def test_connections_beyond_the_cap_are_closed_at_once(engine):
    with serve(engine, max_connections=2, header_timeout_s=30) as running:
        address = ("127.0.0.1", running.port)
        held = [socket.create_connection(address, timeout=10) for _ in range(2)]
        try:
            time.sleep(0.2)  # both are accepted before the third arrives
            with socket.create_connection(address, timeout=10) as extra:
                assert _closed_by_server(extra)
        finally:
            for raw in held:
                raw.close()
        for _ in range(50):  # bounded: the server notices the two closes
            try:
                if httpx.get(f"{running.url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the server did not accept connections again")


def test_headers_growing_past_the_cap_get_400(engine):
    with serve(engine, max_header_bytes=2048, header_timeout_s=30) as running:
        answer = _exchange(
            running.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 4096
        )
    assert answer.startswith("HTTP/1.1 400"), answer


def test_start_up_says_what_a_keyless_server_exposes():
    from tutorlm.serve.commands import exposure_notes

    assert exposure_notes("127.0.0.1", 8000, None) == [
        "no API key: every program and user on this machine can generate at 127.0.0.1:8000 "
        "(other sites' pages cannot: JSON only, Host must be 127.0.0.1, ::1, localhost)"
    ]
    loud = exposure_notes("0.0.0.0", 8000, None)
    assert all(line.startswith("WARNING: ") for line in loud) and len(loud) == 4
    assert "ANYONE who can reach port 8000" in loud[0]
    assert exposure_notes("0.0.0.0", 8000, "k") == [
        "API key required on every route but /health (--host 0.0.0.0)"
    ]
