"""Concurrency and scale-out: 16 clients x 20 requests with no error and no mixed
reply, and one tutorlm server generating through another as its backend."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import openai
import pytest
from serve_support import MOMENTUM, build_notes_index, lively_copy

from tutorlm.generation import chat
from tutorlm.serve.api import create_app
from tutorlm.serve.backend import RemoteEngine, api_base
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.engine import EngineError, LocalEngine
from tutorlm.serve.loading import load_serving_model
from tutorlm.serve.server import BackgroundServer
from tutorlm.serve.tutor import Tutor

CLIENTS, REQUESTS, MAX_TOKENS = 16, 20, 4


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    folder = lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))
    return load_serving_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def local_server(loaded):
    model, tokenizer = loaded
    engine = LocalEngine(model, tokenizer, name="tiny", max_batch=16)
    tutor = Tutor(engine)
    with BackgroundServer(create_app(tutor, ServeConfig(), api_key="backend-key")) as running:
        yield running, tutor
    engine.close()


def question(client: int) -> str:
    """Each client asks its own question, of its own length."""
    return f"Question {client}: what is {client} times {'seven ' * (client % 5 + 1)}?"


def test_16_clients_x_20_requests_get_their_own_replies(local_server, loaded):
    server, tutor = local_server
    model, tokenizer = loaded
    expected = {}
    for client in range(CLIENTS):
        messages = tutor.prepare([{"role": "user", "content": question(client)}]).messages
        expected[client] = (
            chat(model, tokenizer, messages, max_new_tokens=MAX_TOKENS),
            tutor.engine.count_prompt_tokens(messages),
        )
    assert len({text for text, _ in expected.values()}) > CLIENTS // 2  # replies tell clients apart
    latencies, errors, mixed = [], [], []
    lock = threading.Lock()

    def run(client: int) -> None:
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="backend-key", max_retries=0)
        for _ in range(REQUESTS):
            started = time.perf_counter()
            try:
                reply = api.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": question(client)}],
                    max_tokens=MAX_TOKENS,
                    timeout=60,
                )
            except Exception as error:
                with lock:
                    errors.append(repr(error))
                continue
            got = (reply.choices[0].message.content, reply.usage.prompt_tokens)
            with lock:
                latencies.append(time.perf_counter() - started)
                if got != expected[client]:
                    mixed.append((client, got))

    threads = [threading.Thread(target=run, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [] and mixed == []
    assert len(latencies) == CLIENTS * REQUESTS
    cuts = statistics.quantiles(latencies, n=20)
    batches = tutor.engine.batch_sizes
    print(
        f"\n{CLIENTS} clients x {REQUESTS} requests, max_tokens {MAX_TOKENS}: "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {cuts[18] * 1000:.0f} ms, "
        f"mean batch {sum(k * v for k, v in batches.items()) / sum(batches.values()):.1f}"
    )
    assert max(batches) > 1  # concurrent requests were decoded together


def test_a_tutor_can_generate_through_another_server(local_server, loaded, tmp_path):
    backend, _ = local_server
    model, tokenizer = loaded
    engine = RemoteEngine(backend.url, tokenizer, api_key="backend-key", name="front")
    assert engine.model == "tiny" and engine.base == api_base(backend.url + "/v1/")
    front = Tutor(engine, index=build_notes_index(tmp_path))
    conversation = [{"role": "user", "content": "What is momentum?"}]
    prepared = front.prepare(conversation)
    expected = chat(model, tokenizer, prepared.messages, max_new_tokens=6)
    with BackgroundServer(create_app(front)) as running:
        api = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        reply = api.chat.completions.create(model="front", messages=conversation, max_tokens=6)
        chunks = list(
            api.chat.completions.create(
                model="front", messages=conversation, max_tokens=6, stream=True
            )
        )
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == engine.count_prompt_tokens(prepared.messages)
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    assert reply.model_extra["citations"][0]["location"] == MOMENTUM
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected
    engine.close()


def test_backend_failures_are_reported_not_hidden(local_server, loaded):
    backend, _ = local_server
    engine = RemoteEngine(backend.url, loaded[1], model="tiny", api_key="wrong-key")
    app = create_app(Tutor(engine))
    with BackgroundServer(app) as running:
        api = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(
            openai.APIStatusError, match="answered 401: missing or wrong API key"
        ) as caught:
            api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    engine.close()

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(
        EngineError, match=f"backend http://127.0.0.1:{port}/v1 did not list its models"
    ):
        RemoteEngine(f"http://127.0.0.1:{port}", loaded[1])
