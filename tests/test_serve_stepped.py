"""The step decoder and the continuously batched CPU engine: the model's own logits,
replies equal to ``model.generate``'s, the same reply batched or alone, requests that
join and leave between steps, long prompts read in chunks, caps, stops, cancellation."""

from __future__ import annotations

import threading

import pytest
import torch
from serve_support import lively_copy

from tutorlm.decoder import Segment, StepDecoder, choose_token, unsupported_reason
from tutorlm.generation import chat
from tutorlm.quantize.saving import quantize_and_save
from tutorlm.serve.engine import EngineBusy, EngineError, GenerationRequest
from tutorlm.serve.loading import load_serving_model
from tutorlm.serve.stepped import SteppedEngine

QUESTIONS = [
    "What is momentum?",
    "Explain the chain rule, please.",
    "Why is the sky blue?",
    "hi",
    "What does a derivative measure in a graph of position against time?",
]
IDS = [1, 17, 300, 4021, 9, 77, 2048, 5, 3, 3, 49000, 12, 0, 1, 2, 640]
"""16 tokens: up to 16 rows the packed layers run their int8/int4 kernel, in the full
forward as in every step here (above it they expand the weight to bf16)."""


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    """``{kind: (model, tokenizer)}``: the lively float model and its packed copies."""
    lively = lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))
    found = {"float": load_serving_model(str(lively), device="cpu")}
    for method in ("int8-packed", "int4-packed"):
        out = tmp_path_factory.mktemp(method)
        quantize_and_save(str(lively), method, out)
        found[method] = load_serving_model(str(out), device="cpu")
    return found


@pytest.fixture
def engines():
    made = []

    def make(loaded, **kwargs):
        model, tokenizer = loaded
        engine = SteppedEngine(model, tokenizer, name="tiny", **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.mark.parametrize("kind", ["float", "int8-packed", "int4-packed"])
def test_decoder_logits_are_the_models_own(models, kind):
    """A whole prompt, the same prompt in chunks, then one token at a time: each
    step's logits are the full forward's at that position (up to float32 summation
    order: the fused q/k/v and gate/up projections and the fused norm add in another
    order; the lively model's logits reach ~100, so 1e-3 is a few ulps of them)."""
    model, _ = models[kind]
    with torch.inference_mode():
        expected = model(torch.tensor([IDS])).logits[0]  # (T, V)
    decoder = StepDecoder(model, slots=2, max_len=64)
    whole = decoder.forward([Segment(0, 0, IDS[:10])])[0]
    torch.testing.assert_close(whole, expected[9], atol=1e-3, rtol=1e-5)
    decoder.forward([Segment(1, 0, IDS[:4])])
    decoder.forward([Segment(1, 4, IDS[4:10])])
    for position in range(10, len(IDS)):
        both = decoder.forward(
            [Segment(0, position, [IDS[position]]), Segment(1, position, [IDS[position]])]
        )
        torch.testing.assert_close(both[0], expected[position], atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(both[1], expected[position], atol=1e-3, rtol=1e-5)


def test_decoder_refuses_what_it_cannot_run(models):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert unsupported_reason(gpt2) == (
        "model type 'gpt2' (the step decoder knows llama, qwen2, mistral)"
    )
    with pytest.raises(ValueError, match="cannot run this model: model type 'gpt2'"):
        StepDecoder(gpt2)
    assert unsupported_reason(models["float"][0]) is None
    decoder = StepDecoder(models["float"][0], slots=1, max_len=8)
    with pytest.raises(ValueError, match="segment of slot 0 ends at 9, past 8 positions"):
        decoder.forward([Segment(0, 0, IDS[:9])])


@pytest.mark.parametrize("kind", ["float", "int8-packed"])
def test_replies_equal_model_generate(models, engines, kind):
    model, tokenizer = models[kind]
    engine = engines(models[kind])
    for question in QUESTIONS[:3]:
        stream = engine.submit(GenerationRequest(ask(question), max_tokens=10))
        assert stream.text() == chat(model, tokenizer, ask(question), max_new_tokens=10)
        assert stream.finish.prompt_tokens == engine.count_prompt_tokens(ask(question))


@pytest.mark.parametrize("kind", ["int8-packed", "int4-packed"])
def test_the_same_reply_batched_or_alone_with_prompts_read_in_chunks(models, engines, kind):
    """Packed kernels compute each row on its own, and a prompt is cut into chunks
    from its first token whoever else runs: token for token the same replies."""
    alone = engines(models[kind], max_batch=1, prefill_chunk=7)
    expected = [alone.submit(GenerationRequest(ask(q), max_tokens=12)).text() for q in QUESTIONS]
    assert len(set(expected)) == len(QUESTIONS)
    together = engines(models[kind], max_batch=4, prefill_chunk=7)
    streams = [together.submit(GenerationRequest(ask(q), max_tokens=12)) for q in QUESTIONS]
    assert [stream.text() for stream in streams] == expected
    assert max(together.batch_sizes) > 1  # replies really were decoded together


def test_a_request_starts_while_a_long_reply_is_still_running(models, engines):
    engine = engines(models["int8-packed"], max_batch=2)
    long = engine.submit(GenerationRequest(ask(QUESTIONS[0]), max_tokens=400))
    pieces = iter(long)
    next(pieces)  # the long reply is decoding
    short = engine.submit(GenerationRequest(ask(QUESTIONS[1]), max_tokens=3))
    short.text()
    assert short.finish.completion_tokens == 3
    assert long.finish is None  # still running when the short one ended
    long.cancel()
    list(pieces)
    assert long.finish.reason == "length"


def test_caps_stops_cancellation_and_errors(models, engines):
    model, tokenizer = models["int8-packed"]
    engine = engines(models["int8-packed"], max_batch=2, max_queue=2, max_len=96)
    caps = [
        engine.submit(GenerationRequest(ask(q), max_tokens=c)) for q, c in [("hi", 1), ("a", 5)]
    ]
    assert [(s.text(), s.finish.completion_tokens) for s in caps] == [
        (chat(model, tokenizer, ask("hi"), max_new_tokens=1), 1),
        (chat(model, tokenizer, ask("a"), max_new_tokens=5), 5),
    ]
    full = chat(model, tokenizer, ask(QUESTIONS[0]), max_new_tokens=12)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    stopped = engine.submit(GenerationRequest(ask(QUESTIONS[0]), max_tokens=12, stop=(stop,)))
    assert (stopped.text(), stopped.finish.reason) == (full[: full.index(stop)], "stop")

    running = engine.submit(GenerationRequest(ask("hi"), max_tokens=80))
    next(iter(running))
    other = engine.submit(GenerationRequest(ask("hi"), max_tokens=80))
    with pytest.raises(EngineBusy, match="server busy: 2 requests in progress"):
        engine.submit(GenerationRequest(ask("hi"), max_tokens=2))
    running.cancel()
    other.cancel()
    assert running.text() is not None and engine.load <= 1

    prompt = engine.count_prompt_tokens(ask("word " * 40))
    capped = engine.submit(GenerationRequest(ask("word " * 40), max_tokens=500))
    capped.text()
    assert (capped.finish.reason, capped.finish.completion_tokens) == ("length", 96 - prompt)
    too_long = engine.submit(GenerationRequest(ask("word " * 200), max_tokens=5))
    with pytest.raises(EngineError, match="leaves no room in the engine's 96 positions"):
        too_long.text()
    late = engine.submit(GenerationRequest(ask("hi"), max_tokens=2, deadline=0.0))
    with pytest.raises(EngineBusy, match="timed out waiting in the queue"):
        late.text()


def test_many_threads_at_once_get_their_own_replies(models, engines):
    engine = engines(models["int8-packed"], max_batch=3, prefill_chunk=5)
    expected = {q: engine.submit(GenerationRequest(ask(q), max_tokens=8)).text() for q in QUESTIONS}
    got: dict[str, str] = {}

    def client(question: str) -> None:
        got[question] = engine.submit(GenerationRequest(ask(question), max_tokens=8)).text()

    threads = [threading.Thread(target=client, args=(q,)) for q in QUESTIONS * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected
    assert engine.load == 0


def test_choose_token_greedy_top_p_and_seeded_sampling():
    logits = torch.tensor([1.0, 3.0, 3.0, 0.5])
    assert choose_token(logits, 0.0, 1.0, torch.Generator()) == 1  # first of the tied highest
    peaked = torch.tensor([0.0, 5.0, 0.0, 0.0])  # token 1 holds ~95 % of the mass
    assert {
        choose_token(peaked, 1.0, 0.4, torch.Generator().manual_seed(s)) for s in range(20)
    } == {1}
    draws = [choose_token(logits, 1.0, 1.0, torch.Generator().manual_seed(s)) for s in range(200)]
    assert set(draws) == {0, 1, 2, 3}
    again = [choose_token(logits, 1.0, 1.0, torch.Generator().manual_seed(s)) for s in range(200)]
    assert draws == again


@pytest.mark.parametrize("kind", ["int8-packed", "int4-packed"])
def test_bulk_greedy_generation_gives_the_served_replies(models, engines, kind):
    """The evaluation grades what the tutor says: greedy bulk generation on a CPU goes
    through the same decoder and schedule as the engine, with continuous batching
    over more prompts than slots."""
    from tutorlm.bulk import Sampling, TransformersGenerator

    model, tokenizer = models[kind]
    chats = [ask(q) for q in QUESTIONS]
    stepped = TransformersGenerator(model, tokenizer, batch_size=2, progress=False)
    answers = stepped.generate(chats, Sampling(max_new_tokens=12))
    assert stepped._stepped() is not None
    engine = engines(models[kind], max_batch=3)
    served = [engine.submit(GenerationRequest(chat, max_tokens=12)).text() for chat in chats]
    assert [answer.text for answer in answers] == served
    plain = TransformersGenerator(
        model, tokenizer, batch_size=1, progress=False, step_decoder=False
    )
    generated = [a.text for a in plain.generate(chats, Sampling(max_new_tokens=12))]
    # int8 reads prompts with the same bf16 weight as model(...); int4's decoder reads
    # them with a bf16 copy (its kernel is slow on many rows), so model.generate differs
    assert (generated == served) is (kind == "int8-packed")
    stops = stepped.generate(chats, Sampling(max_new_tokens=12, stop=(served[0][3:6],)))
    assert stops[0].text == served[0][:3] and stops[0].finish_reason == "stop"


def test_an_int4_layer_reads_back_the_weight_its_kernel_uses():
    """The decoder reads prompts with this bf16 copy: each weight is the kernel's
    ``(q - 8) * scale + zero``, rounded to bf16."""
    from tutorlm.packed.layers import PackedInt4Linear, unpack_nibbles

    torch.manual_seed(0)
    layer = PackedInt4Linear.from_linear(torch.nn.Linear(64, 32, bias=False))
    q = unpack_nibbles(layer.nibbles()).float()  # (N, K) values 0..15
    scale, zero = layer.scale_and_zero.float().unbind(-1)  # (G, N) each
    expected = (q - 8) * scale.t().repeat_interleave(32, dim=1) + zero.t().repeat_interleave(
        32, dim=1
    )
    assert torch.equal(layer.dequantized(), expected.to(torch.bfloat16))
    rows = torch.randn(3, 64).to(torch.bfloat16)
    torch.testing.assert_close(
        torch.nn.functional.linear(rows, layer.dequantized()).float(),
        layer.matmul_bf16(rows).float(),
        atol=0.05,
        rtol=0.02,
    )
