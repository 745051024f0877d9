"""Hypothesis fuzzes the HTTP API (issue 17): whatever JSON (or bytes) a client sends to
``/v1/chat/completions`` and ``/v1/models``, the answer is never a 5xx and every error
is OpenAI-shaped. In process (Starlette's test client), with a scripted engine."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import ScriptedEngine

from tutorlm.serve.api import create_app
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.tutor import Tutor

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""Bounded (no deadline per example: a shared CI core is slow at times); the three
tests together take well under a minute."""

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"])},
        optional={"content": st.text(max_size=40) | json_values, "name": json_values},
    ),
    max_size=4,
)
FIELDS = [
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "stop",
    "n",
    "user",
    "mode",
    "rag",
    "seed",
    "tools",
]
bodies = st.fixed_dictionaries(
    {"model": st.just("tiny") | json_values, "messages": messages | json_values},
    optional={field: json_values for field in FIELDS},
)


@pytest.fixture(scope="module")
def client(smollm_tokenizer_dir):
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer

    engine = ScriptedEngine(AutoTokenizer.from_pretrained(smollm_tokenizer_dir), ["Hi ", "[1]."])
    engine.name = "tiny"
    engine.submit = _forgetful(engine)
    app = create_app(
        Tutor(engine), ServeConfig(host="testserver", default_max_tokens=8, max_tokens_limit=64)
    )
    with TestClient(app, raise_server_exceptions=False) as running:
        yield running


def _forgetful(engine: ScriptedEngine):
    submit = engine.submit

    def submit_and_forget(request, loop=None):
        stream = submit(request, loop)
        engine.requests.clear()
        return stream

    return submit_and_forget


def _check(reply) -> None:
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


@FUZZ
@given(body=bodies)
def test_no_chat_body_gets_a_5xx(client, body):
    _check(
        client.post(
            "/v1/chat/completions",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
    )


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_no_raw_body_gets_a_5xx(client, raw):
    _check(
        client.post(
            "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
        )
    )


@FUZZ
@given(model=st.text(max_size=40), query=st.text(max_size=20))
def test_no_models_path_gets_a_5xx(client, model, query):
    _check(client.get("/v1/models/" + quote(model, safe=""), params={"q": query}))
    _check(client.get("/v1/models"))
