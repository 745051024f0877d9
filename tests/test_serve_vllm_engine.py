"""The in-process vLLM engine (``--engine vllm``) against a fake ``vllm`` module: our
template's ids in, vLLM's cumulative token ids out as text, the same stop, length,
deadline, cancellation (an aborted vLLM request), queue and usage rules as the other
engines. No GPU here: the fake stands in for vLLM's async engine and records what it
is given, on which event loop."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
import types

import pytest
import torch

from tutorlm.serve.engine import EngineBusy, EngineError, Finish, GenerationRequest
from tutorlm.serve.vllm_serving import VllmServingEngine, open_vllm_engine
from tutorlm.templates import chat_prompt_ids

QUESTION = [{"role": "user", "content": "What is momentum?"}]
REPLY = " Mass times velocity."
FILLER = 198  # "\n": what the fake says after its script, for ever


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeEngineArgs:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeAsyncLLM:
    """vLLM's async engine as this engine uses it: ``generate`` yields outputs whose
    ``token_ids`` grow by ``chunk`` ids at a time (``reply(prompt)``, then ``FILLER``),
    honours ``max_tokens`` and the stop ids, and records requests and aborts (a closed
    or cancelled generator, as vLLM's own ``generate`` aborts)."""

    made: list[FakeAsyncLLM] = []

    def __init__(self, args):
        self.args, self.loop = args, asyncio.get_running_loop()
        self.model_config = types.SimpleNamespace(max_model_len=1024)
        self.requests, self.aborted = [], []
        self.reply = lambda prompt_ids: []
        self.chunk, self.step_s, self.limit = 1, 0.0, None
        self.gate = threading.Event()
        self.gate.set()
        self.fail = None
        self.in_flight = self.most_in_flight = 0
        self.shut = False

    @classmethod
    def from_engine_args(cls, args) -> FakeAsyncLLM:
        engine = cls(args)
        cls.made.append(engine)
        return engine

    def shutdown(self) -> None:
        self.shut = True

    async def generate(self, prompt, params, request_id):
        assert asyncio.get_running_loop() is self.loop  # vLLM's tasks live on one loop
        self.requests.append((prompt, params.kwargs, request_id))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.005)
            if self.fail is not None:
                raise self.fail
            script = itertools.chain(
                self.reply(prompt["prompt_token_ids"]), itertools.repeat(FILLER)
            )
            tokens, stop_ids = [], params.kwargs["stop_token_ids"]
            cap = min(params.kwargs["max_tokens"], self.limit or 10**9)
            while True:
                await asyncio.sleep(self.step_s)
                for token in itertools.islice(script, self.chunk):
                    tokens.append(token)
                    if token in stop_ids or len(tokens) >= cap:
                        break
                reason = None
                if tokens[-1] in stop_ids:
                    reason = "stop"
                elif len(tokens) >= cap:
                    reason = "length"
                best = types.SimpleNamespace(token_ids=list(tokens), finish_reason=reason)
                yield types.SimpleNamespace(outputs=[best], finished=reason is not None)
                if reason is not None:
                    return
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request_id)
            raise
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture
def engine(tokenizer):
    engine = VllmServingEngine(
        lambda: FakeAsyncLLM.from_engine_args(None), FakeSamplingParams, tokenizer, name="fake"
    )
    engine.engine.reply = lambda prompt: ids(tokenizer, REPLY) + [tokenizer.eos_token_id]
    yield engine
    engine.close()


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.AsyncEngineArgs, module.AsyncLLMEngine = FakeEngineArgs, FakeAsyncLLM
    module.SamplingParams = FakeSamplingParams
    FakeAsyncLLM.made = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return module


def wait_until(condition, timeout: float = 10.0) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, "timed out"
        time.sleep(0.01)


def test_open_hands_vllm_the_model_settings_and_our_template_ids(fake_vllm, tiny_model_dir):
    engine = open_vllm_engine(
        str(tiny_model_dir), name="tiny", device="cuda", max_batch=4, max_queue=8
    )
    try:
        (made,) = FakeAsyncLLM.made
        assert made.args.kwargs == {
            "model": str(tiny_model_dir),
            "tokenizer": str(tiny_model_dir),
            "dtype": "bfloat16",
            "trust_remote_code": False,
            "load_format": "safetensors",
            "max_num_seqs": 4,
            "disable_log_stats": True,
        }
        assert (engine.name, engine.max_queue, engine.context_window) == ("tiny", 8, 1024)
        eos = engine.tokenizer.eos_token_id
        assert engine.end_ids == {eos}
        made.reply = lambda prompt: ids(engine.tokenizer, REPLY) + [eos]
        stream = engine.submit(GenerationRequest(QUESTION, 50))
        pieces = list(stream)
        prompt = chat_prompt_ids(engine.tokenizer, QUESTION)
        assert "".join(pieces) == REPLY and len(pieces) == 4
        assert stream.finish == Finish("stop", len(prompt), 4)
        assert made.requests == [
            (
                {"prompt_token_ids": prompt},
                {
                    "n": 1,
                    "max_tokens": 50,
                    "stop_token_ids": [eos],
                    "detokenize": False,
                    "temperature": 0.0,
                    "top_p": 1.0,
                },
                "tutorlm-0",
            )
        ]
        assert made.aborted == [] and engine.load == 0
    finally:
        engine.close()
    assert made.shut


def test_without_vllm_or_a_gpu_the_error_says_why(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(EngineError, match=r"pip install 'tutorlm\[vllm\]'"):
        open_vllm_engine(str(tiny_model_dir), name="tiny")
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        EngineError, match="^--engine vllm cannot run: vLLM needs a CUDA GPU and the device is cpu$"
    ):
        open_vllm_engine(str(tiny_model_dir), name="tiny")


def test_a_sampled_request_asks_vllm_for_its_temperature_and_top_p(engine):
    engine.submit(GenerationRequest(QUESTION, 9, temperature=0.7, top_p=0.9)).text()
    ((_, params, _),) = engine.engine.requests
    assert (params["temperature"], params["top_p"], params["max_tokens"]) == (0.7, 0.9, 9)


def test_several_ids_per_output_make_the_same_reply(engine):
    engine.engine.chunk = 3
    stream = engine.submit(GenerationRequest(QUESTION, 50))
    assert stream.text() == REPLY
    assert stream.finish == Finish("stop", engine.count_prompt_tokens(QUESTION), 4)


def test_a_stop_string_ends_the_reply_before_it_and_aborts_the_request(engine):
    stream = engine.submit(GenerationRequest(QUESTION, 50, stop=(" velocity",)))
    assert stream.text() == " Mass times"
    assert stream.finish == Finish("stop", engine.count_prompt_tokens(QUESTION), 3)
    wait_until(lambda: engine.engine.aborted == ["tutorlm-0"])


def test_max_tokens_and_vllm_s_own_length_limit_end_the_reply_as_length(engine):
    stream = engine.submit(GenerationRequest(QUESTION, 2))
    assert stream.text() == " Mass times"
    assert stream.finish == Finish("length", engine.count_prompt_tokens(QUESTION), 2)
    engine.engine.limit = 3  # vLLM stops at max_model_len before our max_tokens
    stream = engine.submit(GenerationRequest(QUESTION, 50))
    assert stream.text() == " Mass times velocity"
    assert stream.finish == Finish("length", engine.count_prompt_tokens(QUESTION), 3)


def test_a_cancelled_reply_aborts_its_vllm_request_and_frees_its_place(engine):
    engine.engine.step_s = 0.01
    engine.engine.reply = lambda prompt: []
    stream = engine.submit(GenerationRequest(QUESTION, 10_000))
    next(iter(stream))
    stream.cancel()
    wait_until(lambda: engine.engine.aborted == ["tutorlm-0"])
    assert engine.load == 0
    assert engine.submit(GenerationRequest(QUESTION, 2)).text() == "\n\n"


def test_requests_run_together_in_vllm_and_each_gets_its_own_reply(engine, tokenizer):
    engine.engine.step_s = 0.005
    engine.engine.reply = lambda prompt: ids(tokenizer, f" {len(prompt)} tokens") + [2]
    questions = [[{"role": "user", "content": "Why? " * n}] for n in range(1, 7)]
    streams = [engine.submit(GenerationRequest(q, 50)) for q in questions]
    replies = [stream.text() for stream in streams]
    assert replies == [f" {engine.count_prompt_tokens(q)} tokens" for q in questions]
    assert len(set(replies)) == 6 and engine.engine.most_in_flight > 1


def test_a_full_queue_is_busy(engine):
    engine.max_queue = 2
    engine.engine.gate.clear()
    first, second = (engine.submit(GenerationRequest(QUESTION, 50)) for _ in range(2))
    with pytest.raises(EngineBusy, match=r"^server busy: 2 requests in progress; retry later$"):
        engine.submit(GenerationRequest(QUESTION, 50))
    engine.engine.gate.set()
    assert first.text() == second.text() == REPLY
    assert engine.load == 0 and engine.engine.most_in_flight == 2


def test_deadlines_end_a_reply_as_length_or_refuse_a_late_request(engine):
    engine.engine.step_s = 0.02
    engine.engine.reply = lambda prompt: []
    stream = engine.submit(GenerationRequest(QUESTION, 1000, deadline=time.monotonic() + 0.2))
    text = stream.text()
    assert stream.finish.reason == "length" and 0 < stream.finish.completion_tokens < 50
    assert text == "\n" * stream.finish.completion_tokens
    wait_until(lambda: engine.engine.aborted == ["tutorlm-0"])
    late = engine.submit(GenerationRequest(QUESTION, 5, deadline=time.monotonic() - 1))
    with pytest.raises(EngineBusy, match="timed out waiting in the queue"):
        late.text()


def test_a_failed_generation_is_an_error_and_the_engine_goes_on(engine):
    engine.engine.fail = RuntimeError("CUDA error: out of memory")
    with pytest.raises(EngineError, match=r"^generation failed; the server's log has why$"):
        engine.submit(GenerationRequest(QUESTION, 5)).text()
    engine.engine.fail = None
    assert engine.submit(GenerationRequest(QUESTION, 50)).text() == REPLY
    assert engine.load == 0


def test_an_asyncio_reader_gets_the_reply_on_its_own_loop(engine):
    async def read() -> tuple[str, Finish]:
        stream = engine.submit(GenerationRequest(QUESTION, 50), asyncio.get_running_loop())
        pieces = [piece async for piece in stream]
        return "".join(pieces), stream.finish

    results = []  # asyncio.run in a thread of its own: this one may hold a loop already
    reader = threading.Thread(target=lambda: results.append(asyncio.run(read())))
    reader.start()
    reader.join(timeout=30)
    ((text, finish),) = results
    assert text == REPLY and finish == Finish("stop", engine.count_prompt_tokens(QUESTION), 4)


def test_close_shuts_vllm_down_and_refuses_new_requests(tokenizer):
    engine = VllmServingEngine(
        lambda: FakeAsyncLLM.from_engine_args(None), FakeSamplingParams, tokenizer, name="fake"
    )
    engine.engine.gate.clear()
    running = engine.submit(GenerationRequest(QUESTION, 50))
    wait_until(lambda: engine.engine.requests)
    engine.close()
    assert engine.engine.shut and engine.engine.aborted == ["tutorlm-0"]
    assert running.text() == "" and running.finish.reason == "length"
    with pytest.raises(EngineError, match="^the engine is shut down$"):
        engine.submit(GenerationRequest(QUESTION, 5))
