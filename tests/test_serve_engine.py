"""The serving engine: batched replies equal one-at-a-time replies, token caps, stop
strings, cancellation, deadlines and a full queue, on a tiny random model."""

from __future__ import annotations

import pytest
from serve_support import lively_copy

from tutorlm.generation import chat
from tutorlm.serve.engine import (
    EngineBusy,
    GenerationRequest,
    LocalEngine,
)
from tutorlm.serve.loading import load_serving_model
from tutorlm.serve.text import IncrementalText

QUESTIONS = [
    "What is momentum?",
    "Explain the chain rule, please.",
    "Why is the sky blue?",
    "hi",
    "What does a derivative measure in a graph of position against time?",
    "Name a prime number.",
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    return load_serving_model(
        str(lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))), device="cpu"
    )


@pytest.fixture
def engine_factory(loaded):
    engines = []

    def make(**kwargs):
        model, tokenizer = loaded
        engine = LocalEngine(model, tokenizer, name="tiny", **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_batched_replies_equal_one_at_a_time_replies(loaded, engine_factory):
    model, tokenizer = loaded
    expected = [chat(model, tokenizer, ask(q), max_new_tokens=10) for q in QUESTIONS]
    assert len(set(expected)) == len(QUESTIONS)  # the replies tell the prompts apart
    engine = engine_factory(max_batch=len(QUESTIONS), batch_wait_s=30.0)
    streams = [engine.submit(GenerationRequest(ask(q), max_tokens=10)) for q in QUESTIONS]
    replies = [stream.text() for stream in streams]
    assert replies == expected
    assert engine.batch_sizes == {len(QUESTIONS): 1}
    for question, stream in zip(QUESTIONS, streams, strict=True):
        assert stream.finish.prompt_tokens == engine.count_prompt_tokens(ask(question))


def test_each_row_keeps_its_own_token_cap(loaded, engine_factory):
    model, tokenizer = loaded
    engine = engine_factory(max_batch=3, batch_wait_s=30.0)
    caps = [1, 4, 9]
    streams = [
        engine.submit(GenerationRequest(ask(q), max_tokens=cap))
        for q, cap in zip(QUESTIONS, caps, strict=False)
    ]
    for question, cap, stream in zip(QUESTIONS, caps, streams, strict=False):
        assert stream.text() == chat(model, tokenizer, ask(question), max_new_tokens=cap)
        assert (stream.finish.reason, stream.finish.completion_tokens) == ("length", cap)


def test_requests_with_different_sampling_are_not_batched_together(engine_factory):
    engine = engine_factory(max_batch=4, batch_wait_s=0.2)
    streams = [
        engine.submit(GenerationRequest(ask("hi"), max_tokens=2, temperature=t))
        for t in (0.0, 0.7, 0.0, 0.7)
    ]
    for stream in streams:
        stream.text()
    assert sum(engine.batch_sizes.values()) >= 2
    assert max(engine.batch_sizes) <= 2


def test_a_stop_string_ends_the_reply_before_it(loaded, engine_factory):
    model, tokenizer = loaded
    full = chat(model, tokenizer, ask(QUESTIONS[0]), max_new_tokens=12)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    engine = engine_factory()
    stream = engine.submit(GenerationRequest(ask(QUESTIONS[0]), max_tokens=12, stop=(stop,)))
    assert stream.text() == full[: full.index(stop)]
    assert stream.finish.reason == "stop"


def test_incremental_text_holds_back_stop_prefixes_and_split_characters(loaded):
    _, tokenizer = loaded
    text = "Ein Café ☕ kostet 3 €. STOP hier nicht"
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalText(tokenizer, stop=("STOP",))
    pieces = []
    for token in ids:
        pieces.append(decoder.add(token))
        if decoder.stopped:
            break
    assert "".join(pieces) == "Ein Café ☕ kostet 3 €. "
    assert not any("\ufffd" in piece for piece in pieces)

    plain = IncrementalText(tokenizer)
    assert "".join(plain.add(t) for t in ids) + plain.flush() == text


def test_cancel_stops_a_running_reply(engine_factory):
    engine = engine_factory()
    stream = engine.submit(GenerationRequest(ask("hi"), max_tokens=500))
    pieces = iter(stream)
    next(pieces)
    stream.cancel()
    rest = list(pieces)
    assert stream.finish.reason == "length"
    assert stream.finish.completion_tokens < 500
    assert len(rest) < 499


def test_a_full_queue_and_a_passed_deadline_are_busy(engine_factory):
    engine = engine_factory(max_queue=1)
    running = engine.submit(GenerationRequest(ask("hi"), max_tokens=500))
    next(iter(running))
    with pytest.raises(EngineBusy, match="server busy: 1 requests in progress"):
        engine.submit(GenerationRequest(ask("hi"), max_tokens=2))
    running.cancel()
    running.text()

    late = engine.submit(GenerationRequest(ask("hi"), max_tokens=2, deadline=0.0))
    with pytest.raises(EngineBusy, match="timed out waiting in the queue"):
        late.text()
    assert engine.load == 0


def test_serving_refuses_a_directory_without_safetensors(tmp_path, tiny_model_dir):
    import shutil

    from tutorlm.models import UnsafeModelError
    from tutorlm.serve.engine import EngineError

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises((EngineError, UnsafeModelError), match="has no .safetensors weights"):
        load_serving_model(str(folder), device="cpu")


def test_tiny_temperatures_decode_greedily_and_do_not_spoil_their_batch(engine_factory, loaded):
    """1e-300 made logits / temperature overflow to inf: "probability tensor contains
    inf, nan or element < 0" for it and every request batched with it."""
    model, tokenizer = loaded
    engine = engine_factory(max_batch=4, batch_wait_s=0.2)
    temperatures = [1e-300, 1e-30, 0.0, 5e-324]
    streams = [
        engine.submit(GenerationRequest(messages=ask(QUESTIONS[0]), max_tokens=6, temperature=t))
        for t in temperatures
    ]
    greedy = chat(model, tokenizer, ask(QUESTIONS[0]), max_new_tokens=6)
    assert [stream.text() for stream in streams] == [greedy] * 4
    assert GenerationRequest(messages=[], max_tokens=1, temperature=1e-300).temperature == 0.0
    assert GenerationRequest(messages=[], max_tokens=1, temperature=0.5).temperature == 0.5
