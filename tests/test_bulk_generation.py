"""Bulk generation (``tutorlm.bulk``): the transformers backend on a tiny random Llama,
the vLLM backend against a fake ``vllm`` module that records what it is given."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tutorlm.bulk import (
    Generated,
    GenerationConfig,
    GenerationError,
    Sampling,
    TransformersGenerator,
    open_generator,
)
from tutorlm.bulk.vllm_engine import vllm_sampling
from tutorlm.generation import chat

CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [
        {"role": "system", "content": "You are a patient physics teacher."},
        {"role": "user", "content": "Why does a heated gas in a sealed container press harder?"},
    ],
    [{"role": "user", "content": "Name a prime."}],
    [{"role": "user", "content": "Explain, step by step and slowly, what a derivative measures."}],
    [{"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny Llama with larger random weights: its greedy answers are varied words
    (the fixture's own small weights greedily write newlines only)."""
    from tutorlm.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.3, generator=generator)
    return model, tokenizer


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batched_greedy_answers_as_one_chat_at_a_time_in_input_order(tiny, batch_size):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, batch_size=batch_size, progress=False)
    out = generator.generate(CHATS, Sampling(max_new_tokens=7))
    assert [o.text for o in out] == [chat(model, tokenizer, c, max_new_tokens=7) for c in CHATS]
    assert all(o.finish_reason == "length" and o.tokens == 7 for o in out)  # never ends: random


def test_each_prompt_keeps_its_own_budget_inside_a_batch(tiny):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, batch_size=5, progress=False)
    out = generator.generate(CHATS, Sampling(), max_new_tokens=[2, 6, 3, 5, 4])
    assert [o.tokens for o in out] == [2, 6, 3, 5, 4]
    assert out[1].text == chat(model, tokenizer, CHATS[1], max_new_tokens=6)
    with pytest.raises(GenerationError, match="one budget >= 1 per prompt"):
        generator.generate(CHATS, Sampling(), max_new_tokens=[2])


def test_stop_strings_cut_the_answer_and_finish_it(tiny):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, batch_size=2, progress=False)
    free = generator.generate(CHATS[:2], Sampling(max_new_tokens=8))
    stop = free[0].text.split()[2]  # a word from the middle of the first answer
    cut = generator.generate(CHATS[:2], Sampling(max_new_tokens=8, stop=(stop,)))
    assert cut[0].text == free[0].text[: free[0].text.find(stop)]
    assert cut[0].finish_reason == "stop" and cut[0].tokens < 8
    if stop not in free[1].text:
        assert cut[1] == free[1]


def test_an_end_token_finishes_with_stop_and_counts_it(tiny):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, progress=False)
    eos = tokenizer.eos_token_id
    pad = generator.pad_token_id
    words = tokenizer("force equals mass", add_special_tokens=False)["input_ids"]
    assert generator._finish([*words, eos, pad, pad], 9, ()) == Generated(
        "force equals mass", len(words) + 1, "stop"
    )
    assert generator._finish(words, len(words) - 1, ()).finish_reason == "length"


def test_sampling_is_seeded_and_reproducible(tiny):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, batch_size=2, progress=False)
    sampling = Sampling(max_new_tokens=4, temperature=1.0, top_k=50, seed=4)
    state = torch.random.get_rng_state()
    first = generator.generate(CHATS[:3], sampling)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator untouched
    assert generator.generate(CHATS[:3], sampling) == first
    other = generator.generate(CHATS[:3], sampling.model_copy(update={"seed": 5}))
    assert other != first


class GenerateLimit:
    """``model.generate`` that runs out of memory on more than ``rows`` prompts."""

    def __init__(self, model, rows: int):
        self.rows, self.sizes, self.generate = rows, [], model.generate

    def __call__(self, *, input_ids, **kwargs):
        self.sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.generate(input_ids=input_ids, **kwargs)


def test_out_of_memory_halves_the_batch_and_answers_as_batch_one(tiny, monkeypatch):
    model, tokenizer = tiny
    expected = TransformersGenerator(
        model, tokenizer, batch_size=1, progress=False, step_decoder=False
    ).generate(CHATS, Sampling(max_new_tokens=4))
    generator = TransformersGenerator(
        model, tokenizer, batch_size=4, progress=False, step_decoder=False
    )
    limit = GenerateLimit(model, rows=1)
    monkeypatch.setattr(model, "generate", limit)
    assert generator.generate(CHATS, Sampling(max_new_tokens=4)) == expected
    assert generator.batch_size == 1
    assert limit.sizes == [4, 2, 1, 1, 1, 1, 1]  # the failed tries, then one prompt at a time
    monkeypatch.setattr(model, "generate", GenerateLimit(model, rows=0))
    with pytest.raises(GenerationError, match="out of memory generating for one prompt alone"):
        generator.generate(CHATS[:1], Sampling(max_new_tokens=4))


def test_plain_text_prompts_are_continued_without_a_template(tiny):
    model, tokenizer = tiny
    generator = open_generator(tiny, config=GenerationConfig(batch_size=2), progress=False)
    out = generator.generate(["The force on a mass is", ""], Sampling(max_new_tokens=3))
    ids = tokenizer("The force on a mass is", add_special_tokens=False, return_tensors="pt")
    alone = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out[0].text == tokenizer.decode(alone[0, ids["input_ids"].shape[1] :])
    assert out[1].tokens == 3


def test_open_generator_loads_a_spec_on_the_cpu_in_float32(tiny_model_dir):
    generator = open_generator(str(tiny_model_dir), device="cpu", progress=False)
    assert isinstance(generator, TransformersGenerator)
    assert next(generator.model.parameters()).dtype == torch.float32
    assert generator.count_tokens("two words") == len(generator.tokenizer("two words")["input_ids"])


# --- vLLM ------------------------------------------------------------------------------


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLLM:
    """Records its arguments; answers each prompt with its length, in reverse
    completion order internally but returned in input order, as vLLM does."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        FakeLLM.made.append(kwargs)
        self.calls = []

    def generate(self, prompts, params, *, use_tqdm):
        self.calls.append((prompts, params, use_tqdm))
        outputs = []
        for prompt, param in zip(prompts, params, strict=True):
            n = len(prompt["prompt_token_ids"])
            reason = "length" if param.kwargs["max_tokens"] == 2 else "stop"
            best = types.SimpleNamespace(text=f"len {n}", token_ids=[1, 2], finish_reason=reason)
            outputs.append(types.SimpleNamespace(outputs=[best]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    FakeLLM.made = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return module


def test_vllm_gets_the_engine_settings_and_token_ids_of_our_template(fake_vllm, tiny_model_dir):
    from tutorlm.templates import chat_prompt_ids

    config = GenerationConfig(
        backend="vllm", tensor_parallel_size=2, gpu_memory_utilization=0.8, max_model_len=4096
    )
    generator = open_generator(
        str(tiny_model_dir), config=config, device="cuda", seed=7, progress=False
    )
    assert FakeLLM.made == [
        {
            "model": str(tiny_model_dir),
            "tokenizer": str(tiny_model_dir),
            "tensor_parallel_size": 2,
            "dtype": "bfloat16",
            "seed": 7,
            "gpu_memory_utilization": 0.8,
            "trust_remote_code": False,
            "load_format": "safetensors",
            "max_model_len": 4096,
        }
    ]
    sampling = Sampling(
        max_new_tokens=9, temperature=0.7, top_k=50, top_p=1.0, seed=3, stop=("##",)
    )
    out = generator.generate(CHATS[:3], sampling, max_new_tokens=[9, 2, 5])
    prompts, params, use_tqdm = generator.llm.calls[0]
    ids = [chat_prompt_ids(generator.tokenizer, c) for c in CHATS[:3]]
    assert prompts == [{"prompt_token_ids": i} for i in ids] and use_tqdm is False
    eos = generator.tokenizer.eos_token_id
    assert [p.kwargs for p in params] == [
        {
            "n": 1,
            "max_tokens": budget,
            "stop": ["##"],
            "stop_token_ids": [eos],
            "temperature": 0.7,
            "top_p": 1.0,
            "top_k": 50,
            "seed": 3 + index,
        }
        for index, budget in enumerate([9, 2, 5])
    ]
    assert out == [
        Generated(f"len {len(ids[0])}", 2, "stop"),
        Generated(f"len {len(ids[1])}", 2, "length"),
        Generated(f"len {len(ids[2])}", 2, "stop"),
    ]


def test_vllm_greedy_and_all_tokens_mapping():
    greedy = vllm_sampling(Sampling(max_new_tokens=5, top_k=50, top_p=0.5), 5, 0, 2)
    assert greedy == {
        "n": 1,
        "max_tokens": 5,
        "stop": None,
        "stop_token_ids": [2],
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": -1,
        "seed": None,
    }
    sampled = vllm_sampling(Sampling(temperature=1.0), 8, 4, None)
    assert (sampled["top_k"], sampled["top_p"], sampled["seed"]) == (-1, 1.0, 4)
    assert sampled["stop_token_ids"] is None


def test_vllm_not_installed_or_without_a_gpu_says_how_to_fix_it(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(GenerationError, match=r"pip install 'tutorlm\[vllm\]'"):
        open_generator(str(tiny_model_dir), backend="vllm")
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GenerationError, match="needs a CUDA GPU"):
        open_generator(str(tiny_model_dir), backend="vllm")


def test_vllm_refuses_a_loaded_model_and_a_second_gpu_index(fake_vllm, tiny, tiny_model_dir):
    with pytest.raises(GenerationError, match="loads its own weights"):
        open_generator(tiny, backend="vllm")
    with pytest.raises(GenerationError, match="CUDA_VISIBLE_DEVICES"):
        open_generator(str(tiny_model_dir), backend="vllm", device="cuda:1")


def test_sampling_and_config_reject_bad_values():
    with pytest.raises(ValueError, match="stop string cannot be empty"):
        Sampling(stop=("",))
    with pytest.raises(ValueError, match="dtype 'half'"):
        GenerationConfig(dtype="half")
    assert GenerationConfig().samples == Sampling(max_new_tokens=160)


# --- the stages that generate in bulk ---------------------------------------------------


def _sft_records():
    from tutorlm.data.formats import Message, SFTRecord

    return [
        SFTRecord(
            id=f"r{i}",
            source="s",
            messages=[
                Message(role="user", content=c[-1]["content"]),
                Message(role="assistant", content="The answer is 5."),
            ],
        )
        for i, c in enumerate(CHATS[:3])
    ]


def test_generation_metrics_answer_through_the_bulk_generator(tiny):
    from tutorlm.evaluate.generation_metrics import evaluate_generation
    from tutorlm.evaluate.scorer import Scorer

    model, tokenizer = tiny
    scorer = Scorer(model, tokenizer, batch_size=2)
    records = _sft_records()
    result = evaluate_generation(scorer, records, max_new_tokens=5, numeric=False)
    chats = [[{"role": "user", "content": r.messages[0].content}] for r in records]
    expected = [chat(model, tokenizer, c, max_new_tokens=5).strip() for c in chats]
    assert [s["prediction"] for s in result.samples] == expected
    assert [s["id"] for s in result.samples] == ["r0", "r1", "r2"]
    plain = evaluate_generation(scorer, records, max_new_tokens=5, chat=False, numeric=False)
    texts = [r.messages[0].content + "\n" for r in records]
    one_at_a_time = TransformersGenerator(model, tokenizer, batch_size=1, progress=False)
    assert [s["prediction"] for s in plain.samples] == [
        g.text.strip() for g in one_at_a_time.generate(texts, Sampling(max_new_tokens=5))
    ]


def test_generation_metrics_take_another_generator(tiny):
    from tutorlm.evaluate.generation_metrics import evaluate_generation
    from tutorlm.evaluate.scorer import Scorer

    class Echo:
        def __init__(self):
            self.seen = []

        def generate(self, prompts, sampling, *, max_new_tokens=None, desc=""):
            self.seen.append((prompts, sampling))
            return [Generated("The answer is 5.", 5, "stop") for _ in prompts]

    echo = Echo()
    result = evaluate_generation(Scorer(*tiny), _sft_records(), max_new_tokens=9, generator=echo)
    [(prompts, sampling)] = echo.seen
    assert prompts[0] == [{"role": "user", "content": CHATS[0][-1]["content"]}]
    assert sampling == Sampling(max_new_tokens=9) and result.bleu == pytest.approx(100.0)


def test_samples_are_answered_with_the_recipes_sampling(tmp_path, monkeypatch):
    import json

    import tutorlm.bulk
    from tutorlm.data.formats import write_records
    from tutorlm.pipeline.samples import answer_samples
    from tutorlm.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "s",
            "seed": 11,
            "run_root": str(tmp_path),
            "device": "cpu",
            "generation": {"samples": {"max_new_tokens": 1024, "temperature": 1.0, "top_k": 50}},
        }
    )
    write_records(recipe.layout.data("sft.val.jsonl"), _sft_records())
    opened, asked = [], []

    class Fake:
        def __init__(self, spec):
            self.spec = spec

        def generate(self, prompts, sampling, *, max_new_tokens=None, desc=""):
            asked.append(sampling)
            return [Generated(f" {self.spec[-2:]} {i} ", 2, "stop") for i in range(len(prompts))]

    def opener(spec, **options):
        opened.append((spec, options["device"], options["chat_template"]))
        return Fake(spec)

    monkeypatch.setattr(tutorlm.bulk, "open_generator", opener)
    rows = json.loads(answer_samples(recipe).read_text())
    assert [spec for spec, _, _ in opened] == [recipe.layout.model("M0"), recipe.layout.model("M2")]
    assert {device for _, device, _ in opened} == {"cpu"}
    assert (
        asked == [Sampling(max_new_tokens=1024, temperature=1.0, top_k=50, top_p=1.0, seed=11)] * 2
    )
    assert rows[1] == {
        "question": CHATS[1][-1]["content"],
        "M0": f"{recipe.layout.model('M0')[-2:]} 1",
        "M2": f"{recipe.layout.model('M2')[-2:]} 1",
    }


def test_eval_generation_tasks_decode_on_the_recipes_vllm_engine(tiny, tmp_path, monkeypatch):
    """With ``generation.backend: vllm`` the eval stage's generation task decodes on a
    generator opened for the model spec; the scorer's own model decodes nothing."""
    import json

    import tutorlm.bulk
    from tutorlm.data.formats import write_records
    from tutorlm.evaluate.config import EvalConfig
    from tutorlm.evaluate.runner import TaskSpec, run_tasks
    from tutorlm.evaluate.scorer import Scorer

    path = tmp_path / "gen.jsonl"
    write_records(path, _sft_records())
    opened = []

    class Engine:
        def generate(self, prompts, sampling, *, max_new_tokens=None, desc=""):
            return [Generated(f"engine {i}", 2, "stop") for i in range(len(prompts))]

    def opener(spec, **options):
        opened.append((spec, options["config"].backend, options["device"]))
        return Engine()

    monkeypatch.setattr(tutorlm.bulk, "open_generator", opener)
    results = run_tasks(
        "some/model",
        [TaskSpec("gen", "generation", [path])],
        EvalConfig(),
        tmp_path / "out",
        scorer=Scorer(*tiny),
        device="cpu",
        generation=GenerationConfig(backend="vllm"),
    )
    assert opened == [("some/model", "vllm", "cpu")]
    rows = [json.loads(line) for line in (tmp_path / "out" / "generations.gen.jsonl").open()]
    assert [row["prediction"] for row in rows] == ["engine 0", "engine 1", "engine 2"]
    assert results["tasks"]["gen"]["n"] == 3
