"""A misbehaving ``--backend`` cannot take the server down (issue 17): a backend that
stalls ends each reply at the request's deadline with ``finish_reason: "length"`` and
frees its place in the queue, a client that leaves frees its place at once, and a
backend that ignores ``max_tokens`` is cut at it. Fake backends on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from serve_support import FakeBackend

from tutorlm.serve.api import create_app
from tutorlm.serve.backend import RemoteEngine
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.server import BackgroundServer
from tutorlm.serve.tutor import Tutor

QUESTION = [{"role": "user", "content": "What is momentum?"}]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def front(backend: FakeBackend, tokenizer, **settings):
    """A tutorlm server generating on ``backend``; returns (engine, background server)."""
    config = ServeConfig(**settings)
    engine = RemoteEngine(
        backend.url, tokenizer, model="fake", name="tiny", max_queue=config.max_queue
    )
    return engine, BackgroundServer(create_app(Tutor(engine), config))


def ask(url: str, timeout: float = 30, **fields) -> httpx.Response:
    content = json.dumps({"model": "tiny", "messages": QUESTION, "rag": False, **fields})
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=JSON, timeout=timeout)


def test_a_stalled_backend_ends_each_reply_at_the_deadline(tokenizer):
    with FakeBackend(["Momentum is"], stall=True) as backend:
        engine, server = front(backend, tokenizer, request_timeout_s=1.5, max_queue=4)
        with server as running:
            replies = [None] * 4
            elapsed = [0.0] * 4

            def client(number: int) -> None:
                started = time.monotonic()
                replies[number] = ask(running.url)
                elapsed[number] = time.monotonic() - started

            threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            load_after = engine.load
            later = ask(running.url)
        engine.close()
    for reply in replies:
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        assert choice["message"]["content"] == "Momentum is"
        assert choice["finish_reason"] == "length"
        assert reply.json()["usage"]["completion_tokens"] == len(
            tokenizer.encode("Momentum is", add_special_tokens=False)
        )
    assert max(elapsed) < 10  # the deadline (1.5 s), not the reader's grace past it
    assert load_after == 0
    assert later.status_code == 200  # the slots were free again


def test_a_client_that_leaves_frees_its_slot_at_once(tokenizer):
    with FakeBackend(["Momentum is"], stall=True) as backend:
        engine, server = front(backend, tokenizer, request_timeout_s=60, max_queue=1)
        with server as running:
            with pytest.raises(httpx.ReadTimeout):
                ask(running.url, timeout=0.5)
            for _ in range(100):  # bounded: 10 s
                if engine.load == 0:
                    break
                time.sleep(0.1)
            load_after = engine.load
            with httpx.stream(
                "POST",
                f"{running.url}/v1/chat/completions",
                content=json.dumps({"model": "tiny", "messages": QUESTION, "stream": True}),
                headers=JSON,
                timeout=30,
            ) as second:
                status = second.status_code
        engine.close()
    assert load_after == 0
    assert status == 200  # not 503: the first client's place was given back


def test_a_backend_that_ignores_max_tokens_is_cut_at_it(tokenizer):
    with FakeBackend([" word"] * 2000) as backend:
        engine, server = front(backend, tokenizer)
        with server as running:
            whole = ask(running.url, max_tokens=5).json()
            with httpx.stream(
                "POST",
                f"{running.url}/v1/chat/completions",
                content=json.dumps(
                    {"model": "tiny", "messages": QUESTION, "max_tokens": 5, "stream": True}
                ),
                headers=JSON,
                timeout=30,
            ) as streamed:
                events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
        engine.close()
    five = tokenizer.decode(tokenizer.encode(" word" * 2000, add_special_tokens=False)[:5])
    assert whole["choices"][0]["message"]["content"] == five
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 5
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == five and events[-1] == "[DONE]"
    assert backend.requests[0]["max_tokens"] == 5
