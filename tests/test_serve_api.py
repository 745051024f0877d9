"""The HTTP API on a live loopback server, through the official ``openai`` client:
replies equal direct generation, streaming, usage, citations, the API key, and the
status and message of each bad request."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from serve_support import MOMENTUM, ScriptedEngine, build_notes_index, lively_copy

from tutorlm.generation import chat, chat_input_ids
from tutorlm.serve.api import create_app
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.engine import LocalEngine
from tutorlm.serve.loading import load_serving_model
from tutorlm.serve.server import BackgroundServer
from tutorlm.serve.tutor import MODE_PROMPTS, Tutor

KEY = "test-key"
CONFIG = ServeConfig(
    default_max_tokens=8, max_tokens_limit=64, max_prompt_tokens=400, max_body_bytes=8192
)
QUESTION = [{"role": "user", "content": "What is momentum?"}]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    folder = lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))
    return load_serving_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def notes_index(tmp_path_factory):
    return build_notes_index(tmp_path_factory.mktemp("notes"))


@pytest.fixture(scope="module")
def tutor(loaded, notes_index):
    model, tokenizer = loaded
    engine = LocalEngine(model, tokenizer, name="tiny", max_batch=16)
    yield Tutor(engine, index=notes_index, search_mode="hybrid")
    engine.close()


@pytest.fixture(scope="module")
def server(tutor):
    with BackgroundServer(create_app(tutor, CONFIG, api_key=KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def expected_reply(tutor, loaded, conversation, max_tokens=8, mode=None):
    model, tokenizer = loaded
    messages = tutor.prepare(conversation, mode=mode).messages
    return chat(model, tokenizer, messages, max_new_tokens=max_tokens), messages


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "tutorlm"
    health = httpx.get(f"{server.url}/health").json()
    assert health == {"status": "ok", "model": "tiny", "rag": True, "in_progress": 0}


def test_a_reply_equals_direct_generation_with_usage_and_citations(client, tutor, loaded):
    expected, messages = expected_reply(tutor, loaded, QUESTION)
    assert messages[-1]["content"].startswith(f"Course notes:\n[1] ({MOMENTUM})")
    reply = client.chat.completions.create(model="tiny", messages=QUESTION)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "length"
    prompt_tokens = int(chat_input_ids(loaded[1], messages).shape[-1])
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 8)
    assert reply.usage.total_tokens == prompt_tokens + 8
    citations = reply.model_extra["citations"]
    assert citations[0]["number"] == 1 and citations[0]["location"] == MOMENTUM
    assert "Momentum is mass times velocity, p = m v." in citations[0]["text"]
    assert reply.model_extra["mode"] == "tutor"


def test_streaming_sends_the_same_reply_in_pieces(client, tutor, loaded):
    expected, _ = expected_reply(tutor, loaded, QUESTION, max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["citations"][0]["location"] == MOMENTUM
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2 and "".join(pieces) == expected
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_hint_mode_and_a_conversation_with_history(client, tutor, loaded):
    conversation = [
        {"role": "user", "content": "What is momentum?"},
        {"role": "assistant", "content": "Mass times velocity."},
        {"role": "user", "content": "And the chain rule?"},
    ]
    expected, messages = expected_reply(tutor, loaded, conversation, mode="hint")
    assert messages[0]["content"].startswith(MODE_PROMPTS["hint"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    reply = client.chat.completions.create(
        model="tiny", messages=conversation, extra_body={"mode": "hint"}
    )
    assert reply.choices[0].message.content == expected
    assert reply.model_extra["mode"] == "hint"
    assert (
        reply.model_extra["citations"][0]["location"] == "notes/calculus.md, Calculus > Derivatives"
    )


def test_rag_false_and_a_client_system_prompt_are_honoured(client, tutor, loaded):
    conversation = [{"role": "developer", "content": "Answer in French."}, *QUESTION]
    model, tokenizer = loaded
    direct = [{"role": "system", "content": "Answer in French."}, *QUESTION]
    expected = chat(model, tokenizer, direct, max_new_tokens=8)
    reply = client.chat.completions.create(
        model="tiny", messages=conversation, extra_body={"rag": False}
    )
    assert reply.choices[0].message.content == expected
    assert reply.model_extra["citations"] == []


def test_answers_that_cite_notes_are_marked(loaded, notes_index):
    engine = ScriptedEngine(loaded[1], ["Momentum is p = m v ", "[1]."], name="tiny")
    app = create_app(Tutor(engine, index=notes_index), CONFIG)
    with BackgroundServer(app) as running:
        scripted = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        reply = scripted.chat.completions.create(model="tiny", messages=QUESTION)
        chunks = list(
            scripted.chat.completions.create(model="tiny", messages=QUESTION, stream=True)
        )
    cited = [(c["number"], c["cited"]) for c in reply.model_extra["citations"]]
    assert cited[0] == (1, True) and all(not flag for _, flag in cited[1:])
    assert chunks[-1].model_extra["citations"][0]["cited"] is True
    assert chunks[0].model_extra["citations"][0]["cited"] is False  # not known before the answer
    system = engine.requests[0].messages[0]["content"]
    assert system.startswith(MODE_PROMPTS["tutor"]) and "[1], [2]" in system


def test_the_api_key_guards_every_route_but_health(server):
    with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 401 and page.headers["www-authenticate"] == 'Basic realm="tutorlm"'
    assert "password: the key" in page.json()["error"]["message"]
    assert httpx.get(f"{server.url}/", auth=("student", KEY)).status_code == 200
    assert httpx.get(f"{server.url}/static/app.js", auth=("anyone", KEY)).status_code == 200
    assert httpx.get(f"{server.url}/static/app.js", auth=("anyone", "nope")).status_code == 401


def test_the_page_and_its_files_are_served_with_a_strict_policy(server):
    auth = ("student", KEY)
    page = httpx.get(f"{server.url}/", auth=auth)
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    assert (
        httpx.get(f"{server.url}/static/style.css", auth=auth)
        .headers["content-type"]
        .startswith("text/css")
    )
    missing = httpx.get(f"{server.url}/static/..%2Fapi.py", auth=auth)
    assert missing.status_code == 404


BAD_REQUESTS = [
    ("{not json", 400, "request body is not valid JSON"),
    ("[1, 2]", 400, "request body must be a JSON object"),
    ({"model": "gpt-4", "messages": QUESTION}, 404, "model 'gpt-4' is not served here"),
    ({"model": "tiny"}, 400, "messages: Field required"),
    ({"model": "tiny", "messages": []}, 400, "messages: List should have at least 1 item"),
    (
        {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages[0].role: Input should be",
    ),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
        400,
        "messages[0].content: must be a string",
    ),
    ({"model": "tiny", "messages": [{"role": "user"}]}, 400, "messages[0].content: Field required"),
    ({"model": 7, "messages": QUESTION}, 400, "model: Input should be a valid string"),
    (
        {"model": "tiny", "messages": QUESTION, "max_tokens": "5"},
        400,
        "max_tokens: Input should be a valid integer",
    ),
    (
        {"model": "tiny", "messages": QUESTION, "max_tokens": 0},
        400,
        "max_tokens: Input should be greater than or equal to 1",
    ),
    (
        {"model": "tiny", "messages": QUESTION, "max_tokens": 65},
        400,
        "max_tokens: 65 is above this server's limit of 64",
    ),
    (
        {"model": "tiny", "messages": QUESTION, "max_completion_tokens": 100},
        400,
        "max_completion_tokens: 100 is above",
    ),
    (
        {"model": "tiny", "messages": QUESTION, "temperature": 3},
        400,
        "temperature: Input should be less than or equal to 2",
    ),
    (
        {"model": "tiny", "messages": QUESTION, "stream": "yes"},
        400,
        "stream: Input should be a valid boolean",
    ),
    ({"model": "tiny", "messages": QUESTION, "n": 2}, 400, "n: only n=1 is supported"),
    ({"model": "tiny", "messages": QUESTION, "stop": [1]}, 400, "stop: must be a non-empty string"),
    (
        {"model": "tiny", "messages": QUESTION, "seed": 1},
        400,
        "unsupported field 'seed': per-request seeds",
    ),
    ({"model": "tiny", "messages": QUESTION, "colour": "red"}, 400, "unsupported field 'colour'"),
    (
        {"model": "tiny", "messages": QUESTION, "mode": "lecture"},
        400,
        "mode: Input should be 'tutor' or 'hint'",
    ),
    (
        {"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]},
        400,
        "messages: the last message must be the user's question",
    ),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": "  "}]},
        400,
        "messages: the question is empty",
    ),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": "word " * 600}]},
        400,
        "this server accepts at most 400",
    ),
    (
        {"model": "tiny", "messages": [{"role": "user", "content": "x" * 9000}]},
        413,
        "this server accepts at most 8192",
    ),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS)
def test_each_bad_request_gets_its_status_and_message(server, body, status, message):
    content = body if isinstance(body, str) else json.dumps(body)
    reply = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


def test_wrong_methods_and_routes_are_4xx_with_a_message(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    wrong_method = httpx.get(f"{server.url}/v1/chat/completions", headers=headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == "GET /v1/chat/completions: Method Not Allowed"
    assert httpx.get(f"{server.url}/v2/nothing", headers=headers).status_code == 404


def test_the_openai_client_raises_readable_errors(client):
    with pytest.raises(openai.NotFoundError, match="model 'other' is not served here"):
        client.chat.completions.create(model="other", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="max_tokens: 1000 is above"):
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=1000)


def test_a_stop_string_ends_the_reply(client, tutor, loaded):
    expected, _ = expected_reply(tutor, loaded, QUESTION, max_tokens=12)
    stop = expected[len(expected) // 2 : len(expected) // 2 + 3]
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=12, stop=[stop, "never appears"]
    )
    assert reply.choices[0].message.content == expected[: expected.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_a_request_past_its_time_limit_is_not_generated(tutor):
    hurried = ServeConfig(request_timeout_s=1e-6)
    with BackgroundServer(create_app(tutor, hurried)) as running:
        reply = httpx.post(
            f"{running.url}/v1/chat/completions", json={"model": "tiny", "messages": QUESTION}
        )
    assert reply.status_code == 503
    assert reply.json()["error"]["message"] == "timed out waiting in the queue; retry later"


def test_prompt_and_reply_must_fit_the_models_window(tutor):
    wide = ServeConfig(max_tokens_limit=4096, max_prompt_tokens=4096)
    with BackgroundServer(create_app(tutor, wide)) as running:
        reply = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": "tiny", "messages": QUESTION, "max_tokens": 1000},
        )
    prompt_tokens = tutor.engine.count_prompt_tokens(tutor.prepare(QUESTION).messages)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == (
        f"the prompt ({prompt_tokens} tokens) plus max_tokens (1000) is more than the "
        "model's context window of 1024 tokens"
    )


def _read_http_response(raw) -> str:
    """Headers and the whole body (they may arrive in separate packets)."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := raw.recv(4096)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length and (chunk := raw.recv(4096)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_stalled_body_gets_408_not_a_hang(tutor):
    import socket

    app = create_app(tutor, ServeConfig(body_timeout_s=0.2))
    with (
        BackgroundServer(app) as running,
        socket.create_connection((running.host, running.port), timeout=30) as raw,
    ):
        raw.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"'
        )
        answer = _read_http_response(raw)
    assert answer.startswith("HTTP/1.1 408")
    assert "request body not received within 0.2 s" in answer


def test_a_client_that_leaves_stops_its_generation(tutor):
    streams = []
    submit = tutor.engine.submit

    def recording(request, loop=None):
        streams.append(submit(request, loop))
        return streams[-1]

    app = create_app(tutor, ServeConfig(max_tokens_limit=900))
    with BackgroundServer(app) as running:
        tutor.engine.submit = recording
        try:
            body = {"model": "tiny", "messages": QUESTION, "max_tokens": 900, "rag": False}
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=0.3)
            for _ in range(600):  # bounded: at most 60 s
                if streams and streams[0].finish is not None:
                    break
                time.sleep(0.1)
        finally:
            del tutor.engine.submit
    finish = streams[0].finish
    assert finish.reason == "length" and finish.completion_tokens < 900


def test_a_full_queue_answers_503_with_retry_after(loaded):
    model, tokenizer = loaded
    engine = LocalEngine(model, tokenizer, name="tiny", max_queue=1)
    app = create_app(Tutor(engine), ServeConfig(max_tokens_limit=500))
    try:
        with BackgroundServer(app) as running:
            url = f"{running.url}/v1/chat/completions"
            long = {"model": "tiny", "messages": QUESTION, "max_tokens": 500, "stream": True}
            with httpx.stream("POST", url, json=long) as streaming:
                lines = streaming.iter_lines()
                next(lines)  # the first reply is being generated
                busy = httpx.post(url, json={"model": "tiny", "messages": QUESTION})
                events = [line[6:] for line in lines if line.startswith("data: ")]
            assert events[-1] == "[DONE]"  # the first reply was not disturbed
            assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["message"].startswith("server busy")
    finally:
        engine.close()
