"""What is evaluated is what is served: every model the project writes (a quantize-stage
int8 / int4 copy, a torchao copy, a bare LoRA adapter, a GGUF export) loads through
``tutorlm.models.load_model``, so the bulk generator, the samples stage and the
evaluation's generation task run the very model ``tutorlm serve`` serves."""

from __future__ import annotations

import json

import pytest
import torch

from tutorlm.bulk import GenerationError, Sampling, open_generator
from tutorlm.models import (
    ModelLoadError,
    ModelNotFoundError,
    load_model,
    model_kind,
    resolve_model,
)
from tutorlm.packed.directory import QuantizedModelError
from tutorlm.packed.layers import PackedInt4Linear, PackedInt8Embedding, PackedInt8Linear
from tutorlm.quantize.saving import load_quantized, quantize_and_save

TOKENS = torch.tensor([[1, 17, 300, 4021, 9, 77, 2048, 5], [3, 3, 3, 49000, 12, 0, 1, 2]])
PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "Name a prime number."}],
    "The derivative of x^2 is",
]
GREEDY = Sampling(max_new_tokens=8)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.fixture(scope="module")
def packed_dirs(tiny_model_dir, tmp_path_factory):
    """``{method: (directory, the model quantize measured, its logits)}``."""
    root = tmp_path_factory.mktemp("quantize-models")
    found = {}
    for method in ("int8-packed", "int4-packed"):
        _, model = quantize_and_save(str(tiny_model_dir), method, root / method)
        found[method] = (root / method, model, logits(model))
    return found


@pytest.mark.parametrize(
    ("method", "layer"), [("int8-packed", PackedInt8Linear), ("int4-packed", PackedInt4Linear)]
)
def test_a_packed_copy_loads_through_load_model_with_the_same_logits(packed_dirs, method, layer):
    directory, _, measured = packed_dirs[method]
    assert model_kind(directory) == "quantized"
    model, tokenizer = load_model(directory, dtype=torch.bfloat16)  # the copy keeps fp32
    assert isinstance(model.model.layers[0].self_attn.q_proj, layer)
    assert isinstance(model.get_input_embeddings(), PackedInt8Embedding)
    assert model.lm_head.qweight is model.get_input_embeddings().qweight  # tied, one matrix
    assert model.model.norm.weight.dtype == torch.float32
    assert torch.equal(logits(model), measured)  # the same arithmetic, bit for bit
    served, _ = load_quantized(directory)
    assert torch.equal(logits(served), measured)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


@pytest.mark.parametrize("method", ["int8-packed", "int4-packed"])
def test_the_bulk_generator_decodes_a_packed_copy_as_the_measured_model(packed_dirs, method):
    directory, measured, _ = packed_dirs[method]
    generator = open_generator(str(directory), device="cpu", progress=False)
    assert any(isinstance(m, PackedInt8Linear) for m in generator.model.modules())
    expected = open_generator((measured, generator.tokenizer), progress=False)
    answers = generator.generate(PROMPTS, GREEDY)
    assert answers == expected.generate(PROMPTS, GREEDY)
    assert [a.tokens for a in answers] == [8, 8, 8]  # a random model never ends early here


def test_the_samples_stage_answers_with_a_packed_copy(packed_dirs, tmp_path):
    from tutorlm.data.formats import Message, SFTRecord, write_records
    from tutorlm.pipeline.samples import answer_samples
    from tutorlm.recipe import recipe_from_dict

    directory, measured, _ = packed_dirs["int8-packed"]
    recipe = recipe_from_dict(
        {
            "name": "q",
            "run_root": str(tmp_path),
            "device": "cpu",
            "model": str(directory),
            "generation": {"samples": {"max_new_tokens": 6}},
        }
    )
    questions = ["What is 2 + 3?", "Name a prime number."]
    records = [
        SFTRecord(
            id=f"r{i}",
            source="s",
            messages=[Message(role="user", content=q), Message(role="assistant", content="5")],
        )
        for i, q in enumerate(questions)
    ]
    write_records(recipe.layout.data("sft.val.jsonl"), records)
    rows = json.loads(answer_samples(recipe, labels=("M0",)).read_text())
    _, tokenizer = load_model(directory)
    reference = open_generator((measured, tokenizer), progress=False)
    prompts = [[{"role": "user", "content": q}] for q in questions]
    sampling = recipe.generation.samples.model_copy(update={"seed": recipe.seed})
    expected = [out.text.strip() for out in reference.generate(prompts, sampling)]
    assert rows == [{"question": q, "M0": a} for q, a in zip(questions, expected, strict=True)]


def test_the_eval_generation_task_scores_a_packed_copy(packed_dirs, tmp_path):
    from tutorlm.data.formats import Message, SFTRecord, write_records
    from tutorlm.evaluate.config import EvalConfig
    from tutorlm.evaluate.runner import evaluate_files

    directory, measured, _ = packed_dirs["int4-packed"]
    path = tmp_path / "gen.jsonl"
    messages = [Message(role="user", content="What is 2 + 3?")]
    write_records(
        path,
        [
            SFTRecord(
                id="g0", source="s", messages=[*messages, Message(role="assistant", content="5")]
            )
        ],
    )
    settings = EvalConfig(generation_max_new_tokens=5, dtype="bfloat16")
    results = evaluate_files(
        str(directory), tmp_path / "out", generation=path, settings=settings, device="cpu"
    )
    assert results["model_name"] == "int4-packed" and results["dtype"] == "float32"
    assert "generation" in results["tasks"]
    [row] = [
        json.loads(line) for line in (tmp_path / "out" / "generations.generation.jsonl").open()
    ]
    _, tokenizer = load_model(directory)
    [expected] = open_generator((measured, tokenizer), progress=False).generate(
        [[{"role": "user", "content": "What is 2 + 3?"}]], Sampling(max_new_tokens=5)
    )
    assert row["id"] == "g0" and row["prediction"] == expected.text.strip()


def test_a_torchao_copy_loads_through_load_model_as_load_quantized_does(tiny_model_dir, tmp_path):
    pytest.importorskip("torchao")
    record, measured = quantize_and_save(str(tiny_model_dir), "int8-weight", tmp_path / "ao")
    model, _ = load_model(tmp_path / "ao")
    assert record["backend"] == "torchao"
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ != "Parameter"
    assert torch.equal(logits(model), logits(measured))


def test_an_f32_gguf_loads_through_load_model_as_the_float_model(tiny_model_dir, tmp_path):
    """f32 GGUF: every weight is stored bit for bit and transformers undoes the q / k
    rotary permutation by moving values, not computing them, so the tolerance is zero:
    the dequantized model computes the float model's logits exactly (in PyTorch, not
    llama.cpp: transformers turns every GGUF tensor back into a float one)."""
    from tutorlm.quantize.gguf_export import export_gguf

    gguf = tmp_path / "tutor.f32.gguf"
    export_gguf(tiny_model_dir, gguf, qtype="f32")
    assert model_kind(gguf) == "gguf"
    model, tokenizer = load_model(gguf)
    reference, float_tokenizer = load_model(tiny_model_dir)
    assert torch.equal(logits(model), logits(reference))
    text = "Hello world, 12345 x^2! <|im_start|>user"
    assert tokenizer.encode(text) == float_tokenizer.encode(text)
    assert tokenizer.chat_template == float_tokenizer.chat_template
    with pytest.raises(ModelNotFoundError, match="is a GGUF file: tutorlm.models.load_model"):
        resolve_model(gguf)  # the steps that need a folder (training, vLLM) say why


def test_a_bare_lora_adapter_loads_merged_as_the_train_stage_merges_it(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    assert model_kind(tmp_path / "adapter") == "adapter"
    model, tokenizer = load_model(tmp_path / "adapter")
    assert torch.equal(logits(model), logits(merged))
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    with pytest.raises(ModelLoadError, match="LoRA adapter: it loads on one device"):
        load_model(tmp_path / "adapter", device_map="auto")


def test_a_folder_that_is_no_model_is_refused_by_name(tmp_path, tiny_model_dir):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# notes\n")
    with pytest.raises(ModelNotFoundError, match=r"notes is not a model directory \(no config"):
        load_model(tmp_path / "notes")


def test_a_packed_copy_on_cuda_is_refused_before_loading(packed_dirs):
    directory, _, _ = packed_dirs["int8-packed"]
    with pytest.raises(QuantizedModelError) as error:
        load_model(directory, device="cuda")
    assert str(error.value) == (
        f"{directory} is an int8-packed copy: its layers run on torch's CPU kernels only, and "
        "the device is cuda. Run it on the CPU (--device cpu, or device: cpu in the recipe), "
        "or quantize for the GPU with int8-weight or int4-weight."
    )
    with pytest.raises(ModelLoadError, match="quantize-stage copy: it loads on one device"):
        load_model(directory, device_map="auto")


def test_vllm_and_requantizing_refuse_a_packed_copy(packed_dirs):
    from tutorlm.quantize.methods import QuantizeError

    directory, _, _ = packed_dirs["int8-packed"]
    with pytest.raises(GenerationError, match="vllm loads float safetensors checkpoints"):
        open_generator(str(directory), backend="vllm")
    with pytest.raises(QuantizeError, match="is already a quantized copy; quantize its float"):
        quantize_and_save(str(directory), "int4-packed", directory.parent / "again")
