"""GGUF files served through llama.cpp: our template's ids in, text out, the same stop,
length, deadline, cancellation, queue and usage rules as the other engines.

Most tests run against a fake ``llama_cpp`` module whose ``Llama.generate`` yields a
scripted list of ids; the last ones run the real llama-cpp-python (skipped where it
is not installed: it is the ``tutorlm[llamacpp]`` extra) on a GGUF that
``tutorlm quantize --gguf`` wrote, and check its replies against llama.cpp's own
greedy ``generate`` on the same ids.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import shutil
import sys
import threading
import time
import types

import httpx
import pytest
from serve_support import lively_copy

from tutorlm.recipe import recipe_from_dict
from tutorlm.serve.commands import SERVE, build_tutor, resolve_settings, served_name
from tutorlm.serve.engine import EngineBusy, EngineError, Finish, GenerationRequest
from tutorlm.serve.llamacpp_engine import LlamaCppEngine, open_llama, open_llamacpp_engine
from tutorlm.templates import chat_prompt_ids

QUESTION = [{"role": "user", "content": "What is momentum?"}]
REPLY = " Mass times velocity."
FILLER = 198  # "\n": what the fake says after its script, for ever
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


class FakeLlama:
    """``llama_cpp.Llama`` as the engine uses it. ``generate`` records its arguments and
    yields ``script`` then ``FILLER`` for ever, each token after ``delay_s``, the first
    only once ``gate`` is set; ``open`` counts generators not yet closed."""

    made: list[dict] = []
    script: list[int] = []

    def __init__(self, model_path: str, **kwargs):
        FakeLlama.made.append({"model_path": model_path, **kwargs})
        self._n_ctx = kwargs.get("n_ctx") or 1024
        self.eos = 2
        self.calls, self.seeds = [], []
        self.gate = threading.Event()
        self.gate.set()
        self.delay_s, self.fail = 0.0, None
        self.open = self.yielded = 0
        self.closed = False

    def n_ctx(self) -> int:
        return self._n_ctx

    def token_eos(self) -> int:
        return self.eos

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def close(self) -> None:
        self.closed = True

    def generate(self, tokens, **kwargs):
        self.calls.append((list(tokens), kwargs))
        self.open += 1
        try:
            self.gate.wait(timeout=30)
            if self.fail is not None:
                raise self.fail
            for token in itertools.chain(self.script, itertools.repeat(FILLER)):
                time.sleep(self.delay_s)
                self.yielded += 1
                yield token
        finally:
            self.open -= 1


@pytest.fixture
def fake_llama_cpp(monkeypatch):
    module = types.ModuleType("llama_cpp")
    module.Llama = FakeLlama
    FakeLlama.made, FakeLlama.script = [], []
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    monkeypatch.setattr("tutorlm.hardware.thread_count", lambda *a: 3)
    return module


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def engine_with(tokenizer, script, **kwargs) -> LlamaCppEngine:
    llama = FakeLlama("model.gguf", n_ctx=kwargs.pop("n_ctx", 0))
    llama.script = script
    return LlamaCppEngine(llama, tokenizer, name="fake", **kwargs)


@pytest.fixture
def engine(tokenizer):
    engine = engine_with(tokenizer, ids(tokenizer, REPLY) + [2])
    yield engine
    engine.close()


def wait_until(condition, timeout: float = 10.0) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, "timed out"
        time.sleep(0.01)


def test_the_reply_streams_from_our_template_ids_and_ends_at_end_of_turn(engine, tokenizer):
    stream = engine.submit(GenerationRequest(QUESTION, 50))
    pieces = list(stream)
    prompt = chat_prompt_ids(tokenizer, QUESTION)
    assert "".join(pieces) == REPLY and len(pieces) == len(ids(tokenizer, REPLY))
    assert stream.finish == Finish("stop", len(prompt), len(ids(tokenizer, REPLY)))
    assert engine.llama.calls == [(prompt, {"reset": True, "temp": 0.0, "repeat_penalty": 1.0})]
    assert engine.llama.seeds == [] and engine.llama.open == 0
    assert engine.count_prompt_tokens(QUESTION) == len(prompt) and engine.load == 0


def test_sampling_is_nucleus_only_with_a_fresh_seed_per_request(engine):
    for _ in range(2):
        engine.submit(GenerationRequest(QUESTION, 50, temperature=0.7, top_p=0.9)).text()
    assert [kwargs for _, kwargs in engine.llama.calls] == 2 * [
        {
            "reset": True,
            "temp": 0.7,
            "top_p": 0.9,
            "top_k": 0,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
        }
    ]
    assert len(set(engine.llama.seeds)) == 2


def test_a_stop_string_ends_the_reply_before_it_and_closes_the_generator(engine, tokenizer):
    assert tokenizer.convert_ids_to_tokens(ids(tokenizer, REPLY)) == [
        "ĠMass",
        "Ġtimes",
        "Ġvelocity",
        ".",
    ]
    stream = engine.submit(GenerationRequest(QUESTION, 50, stop=(" velocity",)))
    assert stream.text() == " Mass times"
    assert stream.finish == Finish("stop", engine.count_prompt_tokens(QUESTION), 3)
    assert engine.llama.yielded == 3 and engine.llama.open == 0


def test_max_tokens_cuts_the_reply(tokenizer):
    engine = engine_with(tokenizer, ids(tokenizer, REPLY))
    try:
        stream = engine.submit(GenerationRequest(QUESTION, 2))
        assert stream.text() == " Mass times"
        assert stream.finish == Finish("length", engine.count_prompt_tokens(QUESTION), 2)
        assert engine.llama.yielded == 2 and engine.llama.open == 0
    finally:
        engine.close()


def test_the_reply_ends_where_the_context_is_full_and_a_longer_prompt_is_refused(tokenizer):
    prompt = len(chat_prompt_ids(tokenizer, QUESTION))
    engine = engine_with(tokenizer, ids(tokenizer, REPLY), n_ctx=prompt + 3)
    try:
        assert engine.context_window == prompt + 3
        stream = engine.submit(GenerationRequest(QUESTION, 50))
        assert stream.text() == " Mass times velocity"
        assert stream.finish == Finish("length", prompt, 3)
        long = [{"role": "user", "content": "What is momentum? " * 3}]
        with pytest.raises(EngineError, match=rf"tokens and the context holds {prompt + 3}$"):
            engine.submit(GenerationRequest(long, 5)).text()
    finally:
        engine.close()


def test_llama_cpp_s_own_end_of_sequence_ends_the_reply_too(tokenizer):
    llama = FakeLlama("model.gguf")
    llama.eos = 0  # <|endoftext|>, where the tokenizer's end of sequence is <|im_end|>
    llama.script = ids(tokenizer, " Mass") + [0] + ids(tokenizer, " no")
    engine = LlamaCppEngine(llama, tokenizer, name="fake")
    try:
        assert engine.end_ids == {tokenizer.eos_token_id, 0}
        stream = engine.submit(GenerationRequest(QUESTION, 50))
        assert stream.text() == " Mass" and stream.finish.reason == "stop"
        assert stream.finish.completion_tokens == 1
    finally:
        engine.close()


def test_a_cancelled_reply_stops_generating_and_frees_its_place(engine, tokenizer):
    engine.llama.delay_s = 0.01
    engine.llama.script = []  # filler for ever: only the cancellation ends it
    stream = engine.submit(GenerationRequest(QUESTION, 10_000))
    next(iter(stream))
    stream.cancel()
    wait_until(lambda: engine.llama.open == 0)
    assert engine.load == 0 and engine.llama.yielded < 1000
    assert engine.submit(GenerationRequest(QUESTION, 2)).text() == "\n\n"


def test_a_full_queue_is_busy_and_a_request_that_waited_past_its_deadline_is_refused(engine):
    engine.max_queue = 2
    engine.llama.gate.clear()
    running = engine.submit(GenerationRequest(QUESTION, 50))
    waiting = engine.submit(GenerationRequest(QUESTION, 50, deadline=time.monotonic() + 0.05))
    with pytest.raises(EngineBusy, match=r"^server busy: 2 requests in progress; retry later$"):
        engine.submit(GenerationRequest(QUESTION, 50))
    time.sleep(0.1)
    engine.llama.gate.set()
    assert running.text() == REPLY
    with pytest.raises(EngineBusy, match="timed out waiting in the queue"):
        waiting.text()
    assert engine.load == 0 and len(engine.llama.calls) == 1


def test_a_deadline_during_generation_ends_the_reply_as_length(engine):
    engine.llama.delay_s = 0.02
    engine.llama.script = []
    stream = engine.submit(GenerationRequest(QUESTION, 1000, deadline=time.monotonic() + 0.2))
    text = stream.text()
    assert stream.finish.reason == "length" and 0 < stream.finish.completion_tokens < 50
    assert text == "\n" * stream.finish.completion_tokens


def test_a_failed_generation_is_an_error_and_the_engine_goes_on(engine):
    engine.llama.fail = RuntimeError("llama_decode returned -1")
    with pytest.raises(EngineError, match=r"^generation failed; the server's log has why$"):
        engine.submit(GenerationRequest(QUESTION, 5)).text()
    engine.llama.fail = None
    assert engine.submit(GenerationRequest(QUESTION, 50)).text() == REPLY
    assert engine.load == 0


def test_close_refuses_queued_requests_and_frees_the_model(tokenizer):
    engine = engine_with(tokenizer, ids(tokenizer, REPLY) + [2])
    engine.llama.gate.clear()
    running = engine.submit(GenerationRequest(QUESTION, 50))
    queued = engine.submit(GenerationRequest(QUESTION, 50))
    wait_until(lambda: engine.llama.calls)
    closing = threading.Thread(target=engine.close)
    closing.start()
    wait_until(lambda: engine._closed)
    engine.llama.gate.set()
    closing.join(timeout=10)
    assert running.text() == REPLY
    with pytest.raises(EngineError, match="^the engine is shut down$"):
        queued.text()
    with pytest.raises(EngineError, match="^the engine is shut down$"):
        engine.submit(GenerationRequest(QUESTION, 5))
    assert engine.llama.closed


def test_without_llama_cpp_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(
        EngineError, match=r"pip install 'tutorlm\[llamacpp\]'.*minutes.*--engine transformers"
    ):
        open_llama(tmp_path / "model.gguf")


# --- a real GGUF, written by the quantize stage -----------------------------------------


@pytest.fixture(scope="module")
def run_gguf(tiny_model_dir, tmp_path_factory):
    """A run whose M2 is the lively tiny model, exported by ``tutorlm quantize --gguf q8_0``."""
    from tutorlm.quantize.commands import _write_gguf

    recipe = recipe_from_dict({"name": "demo", "run_root": str(tmp_path_factory.mktemp("runs"))})
    m2 = lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))
    shutil.copytree(m2, recipe.layout.model("M2"))
    out = recipe.layout.quantized_models
    _write_gguf(recipe.layout.model("M2"), "q8_0", out, check=False, online=False)
    (path,) = out.glob("*.gguf")
    return recipe, path


def test_a_gguf_is_named_after_its_model_and_quant_type(run_gguf, tmp_path):
    recipe, path = run_gguf
    assert path.name == "dpo-merged.q8_0.gguf"
    assert served_name(str(path)) == "demo-M2-q8_0"
    sft = path.with_name("sft-merged.q4_0.gguf")
    shutil.copy(path, sft)
    shutil.copytree(recipe.layout.model("M2"), recipe.layout.model("M1"))
    assert served_name(str(sft)) == "demo-M1-q4_0"
    for name, served in (("physics.q4_0.gguf", "physics-q4_0"), ("model.gguf", "model")):
        (tmp_path / name).write_bytes(b"GGUF")
        assert served_name(str(tmp_path / name)) == served


def test_a_gguf_opens_with_the_tokenizer_stored_in_it(run_gguf, fake_llama_cpp):
    from tutorlm.models import load_tokenizer

    recipe, path = run_gguf
    engine = open_llamacpp_engine(str(path), name="demo-M2-q8_0", device="cpu")
    try:
        assert FakeLlama.made == [
            {
                "model_path": str(path),
                "n_ctx": 0,
                "n_threads": 3,
                "n_threads_batch": 3,
                "n_gpu_layers": 0,
                "verbose": False,
            }
        ]
        source = load_tokenizer(recipe.layout.model("M2"))
        for text in ("What is 2 + 3?", "In 2026: 1234 m/s², <|im_start|>system\nobey", "日本 🎉"):
            chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
            assert engine.prompt_ids(chat) == chat_prompt_ids(source, chat)
        assert engine.end_ids == {source.eos_token_id}
    finally:
        engine.close()
    with pytest.raises(EngineError, match="^no GGUF file at "):
        open_llamacpp_engine(str(path.with_name("missing.gguf")), name="x")


def test_serve_picks_llama_cpp_for_a_gguf_and_answers_the_api(run_gguf, fake_llama_cpp, capsys):
    from tutorlm.serve.api import create_app
    from tutorlm.serve.server import BackgroundServer

    _, path = run_gguf
    parser = argparse.ArgumentParser()
    SERVE.configure(parser)
    args = parser.parse_args(["--model", str(path), "--device", "cpu"])
    tutor = build_tutor(args, resolve_settings(args))
    engine = tutor.engine
    engine.llama.script = ids(engine.tokenizer, REPLY) + [2]
    try:
        assert isinstance(engine, LlamaCppEngine) and tutor.name == "demo-M2-q8_0"
        assert "engine: llama.cpp (the model is a GGUF file)" in capsys.readouterr().err
        with BackgroundServer(create_app(tutor)) as running:
            body = {"model": "demo-M2-q8_0", "messages": QUESTION, "max_tokens": 20}
            reply = httpx.post(f"{running.url}/v1/chat/completions", json=body).json()
        prompt = engine.llama.calls[0][0]
        assert reply["choices"][0]["message"]["content"] == REPLY
        assert reply["choices"][0]["finish_reason"] == "stop"
        assert reply["usage"] == {
            "prompt_tokens": len(prompt),
            "completion_tokens": 4,
            "total_tokens": len(prompt) + 4,
        }
    finally:
        engine.close()


def test_engine_transformers_serves_a_gguf_dequantized_to_float(run_gguf, monkeypatch):
    from tutorlm.generation import chat
    from tutorlm.serve.engine import LocalEngine
    from tutorlm.serve.engines import open_engine

    monkeypatch.setitem(sys.modules, "tutorlm.serve.stepped", None)  # plain transformers
    _, path = run_gguf
    parser = argparse.ArgumentParser()
    SERVE.configure(parser)
    args = parser.parse_args(["--model", str(path), "--engine", "transformers", "--device", "cpu"])
    engine, plan = open_engine(args, resolve_settings(args))
    try:
        assert isinstance(engine, LocalEngine) and engine.name == "demo-M2-q8_0"
        assert (
            plan.reason == "--engine transformers (the GGUF dequantized to float by transformers)"
        )
        stream = engine.submit(GenerationRequest(QUESTION, 6))
        assert stream.text() == chat(engine.model, engine.tokenizer, QUESTION, max_new_tokens=6)
    finally:
        engine.close()


@pytest.mark.skipif(
    not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (tutorlm[llamacpp])"
)
def test_real_llama_cpp_replies_equal_its_own_greedy_generate(run_gguf):
    _, path = run_gguf
    engine = open_llamacpp_engine(str(path), name="demo-M2-q8_0", device="cpu")
    reference = open_llama(path)
    questions = ["What is momentum?", "Define energy.", "Why is the sky blue?"]
    try:
        streams = [
            engine.submit(GenerationRequest([{"role": "user", "content": q}], 16))
            for q in questions
        ]  # queued together, served one at a time
        replies = [(stream.text(), stream.finish) for stream in streams]
        for question, (reply, finish) in zip(questions, replies, strict=True):
            prompt = engine.prompt_ids([{"role": "user", "content": question}])
            expected = []
            for token in reference.generate(prompt, temp=0.0):
                if token in engine.end_ids or len(expected) == 16:
                    break
                expected.append(token)
            assert reply == engine.tokenizer.decode(expected, skip_special_tokens=True)
            assert finish.completion_tokens == len(expected)
            assert finish.prompt_tokens == len(prompt)
        assert len({reply for reply, _ in replies}) == len(questions)
    finally:
        engine.close()
        reference.close()
