"""Quantization methods: exact kernels maths, real size reductions, save / reload, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tutorlm.packed import layers as packed
from tutorlm.quantize.measure import weight_bytes
from tutorlm.quantize.methods import (
    CPU_METHODS,
    METHODS,
    QuantizeError,
    check_available,
    get_method,
    pack_model,
)
from tutorlm.quantize.saving import (
    PACKED_FILE,
    RECORD_FILE,
    load_quantized,
    quantize_and_save,
    quantize_in_memory,
    quantize_to_dir,
    read_record,
)

TOKENS = torch.tensor([[1, 17, 300, 4021, 9, 77, 2048, 5], [3, 3, 3, 49000, 12, 0, 1, 2]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


# -- the kernels' maths ----------------------------------------------------------------


def test_int8_linear_computes_int8_weights_times_row_scales():
    torch.manual_seed(0)
    linear = nn.Linear(96, 48, bias=True)
    layer = packed.PackedInt8Linear.from_linear(linear)
    assert layer.qweight.dtype == torch.int8 and layer.scale.dtype == torch.bfloat16
    assert layer.qweight.abs().max().item() == 127  # each row's largest weight maps to +-127
    weight = layer.qweight.float() * layer.scale.float()[:, None]
    assert (weight - linear.weight).abs().max() <= layer.scale.float().max() / 2 + 1e-6
    x = torch.randn(3, 96)
    expected = x.bfloat16().float() @ weight.t() + linear.bias
    small = layer(x)  # <= KERNEL_MAX_ROWS rows: torch._weight_int8pack_mm
    large = layer(x.repeat(8, 1))  # 24 rows: bf16 dequantized matmul
    assert torch.allclose(small, expected, atol=0.02, rtol=0.01)
    assert torch.allclose(large[:3], expected, atol=0.02, rtol=0.01)


def test_int4_recovers_weights_already_on_a_4bit_grid_exactly():
    """Each group's min and max land on the grid: 4-bit weights (a Q4_1 GGUF's) stay exact."""
    torch.manual_seed(0)
    q = torch.randint(0, 16, (32, 64))
    q[:, ::32] = 0  # every group of 32 holds both ends of its range
    q[:, 1::32] = 15
    # power-of-two steps and offsets on the grid: every (scale, zero) is exact in bf16
    scale = (2.0 ** -torch.randint(3, 10, (32, 2)).float()).repeat_interleave(32, dim=1)
    low = -torch.randint(0, 16, (32, 2)).float().repeat_interleave(32, dim=1) * scale
    weight = low + q * scale
    found, scale_and_zero = packed.quantize_int4_groups(weight)
    assert torch.equal(found.long(), q)
    s = scale_and_zero[..., 0].float().t().repeat_interleave(32, dim=1)
    z = scale_and_zero[..., 1].float().t().repeat_interleave(32, dim=1)
    assert torch.allclose((found.float() - 8) * s + z, weight, atol=1e-5)


def test_int4_nibbles_round_trip_through_the_kernel_layout():
    torch.manual_seed(1)
    linear = nn.Linear(64, 32, bias=False)
    layer = packed.PackedInt4Linear.from_linear(linear)
    q, _ = packed.quantize_int4_groups(linear.weight)
    assert torch.equal(packed.unpack_nibbles(packed.pack_nibbles(q)), q.int())
    assert torch.equal(layer.nibbles(), packed.pack_nibbles(q))
    copy = packed.PackedInt4Linear(64, 32, bias=False)
    copy.load_nibbles(layer.nibbles())
    copy.scale_and_zero = layer.scale_and_zero
    x = torch.randn(5, 64)
    assert torch.equal(copy(x), layer(x))


def test_int4_shapes_the_kernel_refuses_fall_back_to_int8(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.model.layers[0].mlp.down_proj = nn.Linear(128, 72, bias=False)  # K=128 ok, N=72 not /16
    layout = pack_model(model, 4)
    assert layout["model.layers.0.mlp.down_proj"] == "int8"
    assert layout["model.layers.0.mlp.up_proj"] == "int4"
    assert layout["model.embed_tokens"] == "int8-embedding" and layout["lm_head"] == "tied"
    assert model.lm_head.qweight is model.model.embed_tokens.qweight  # one matrix, two uses


# -- every CPU method on the tiny model ------------------------------------------------


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, tmp_path_factory):
    """Each CPU method applied once: (record, directory, logits of the in-memory model)."""
    root = tmp_path_factory.mktemp("quantized")
    results = {}
    for name in CPU_METHODS:
        record, model = quantize_and_save(tiny_model_dir, name, root / name)
        results[name] = (record, root / name, logits(model))
    return results


def tiny_fp32_bytes(config) -> int:
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * hidden // config.num_attention_heads
    linears = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)
    norms = (2 * layers + 1) * hidden
    return 4 * (linears + norms + config.vocab_size * hidden)


def test_fp32_weight_bytes_count_the_tied_matrix_once(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert weight_bytes(model) == tiny_fp32_bytes(model.config) == 12_879_104


@pytest.mark.parametrize("name", ["int8-packed", "int4-packed"])
def test_packed_methods_hold_exactly_the_bytes_their_format_says(quantized, name):
    record, directory, _ = quantized[name]
    config = json.loads((directory / "config.json").read_text())
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden)]
    shapes += [(inter, hidden), (inter, hidden), (hidden, inter)]
    per_layer = sum(
        n * k + 2 * n if name == "int8-packed" else n * k // 2 + (k // 32) * n * 2 * 2
        for n, k in shapes
    )
    norms = 4 * (2 * config["num_hidden_layers"] + 1) * hidden
    embedding = vocab * hidden + 2 * vocab  # int8 rows + bf16 scales, shared with lm_head
    assert record["weight_bytes"] == config["num_hidden_layers"] * per_layer + norms + embedding
    assert record["weight_bytes"] <= 0.3 * record["source"]["weight_bytes"]


@pytest.mark.parametrize("name", ["int8-weight", "int8-dynamic", "int4-weight"])
def test_torchao_methods_shrink_every_linear_weight(quantized, name):
    record, directory, _ = quantized[name]
    model, _ = load_quantized(directory)
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert linears and all(type(m.weight).__name__ != "Parameter" for m in linears)
    stored = sum(weight_bytes(m) for m in linears)
    fp32 = sum(4 * m.in_features * m.out_features for m in linears)
    assert stored <= 0.3 * fp32
    # torchao leaves the (tied) embedding in fp32: on this embedding-heavy model that is most bytes
    assert record["source"]["weight_bytes"] - record["weight_bytes"] == fp32 - stored


@pytest.mark.parametrize("name", CPU_METHODS)
def test_reloaded_model_gives_the_same_logits_as_before_saving(quantized, name):
    record, directory, before = quantized[name]
    assert read_record(directory)["method"] == name and record["weights"] is not None
    model, tokenizer = load_quantized(directory)
    assert torch.equal(logits(model), before)
    assert weight_bytes(model) == record["weight_bytes"]
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    # torch's int8 / int4 CPU kernels crash on weights that are not 64-byte aligned
    buffers = [b for n, b in model.named_buffers() if n.endswith(("qweight", "packed", "scale"))]
    assert all(b.data_ptr() % 64 == 0 for b in buffers)


def test_quantized_model_generates_through_the_chat_template(quantized, tiny_model_dir):
    from transformers import AutoTokenizer

    from tutorlm.generation import chat_input_ids

    _, directory, _ = quantized["int8-packed"]
    model, tokenizer = load_quantized(directory)
    source = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    assert torch.equal(chat_input_ids(tokenizer, messages), chat_input_ids(source, messages))
    ids = chat_input_ids(tokenizer, messages)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 6)


def test_packed_file_is_not_a_plain_transformers_checkpoint(quantized):
    _, directory, _ = quantized["int8-packed"]
    assert (directory / PACKED_FILE).is_file() and not (directory / "model.safetensors").exists()


# -- rebuild records, adapters, bad input -----------------------------------------------


def test_a_record_without_weights_rebuilds_the_same_model(tiny_model_dir, tmp_path, quantized):
    record = quantize_to_dir(tiny_model_dir, "int4-packed", tmp_path / "q", save_weights=False)
    assert record["weights"] is None and not (tmp_path / "q" / PACKED_FILE).exists()
    assert record["rebuild"].startswith(
        f"tutorlm quantize --model {tiny_model_dir} --method int4-packed"
    )
    model, _ = load_quantized(tmp_path / "q")
    assert torch.equal(logits(model), quantized["int4-packed"][2])


def test_a_lora_adapter_is_merged_in_fp32_before_quantizing(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    record = quantize_to_dir(tmp_path / "adapter", "int8-packed", tmp_path / "q")
    assert record["source"]["adapter"] == str((tmp_path / "adapter").resolve())
    model, _ = load_quantized(tmp_path / "q")
    expected, _ = quantize_in_memory(tmp_path / "merged", "int8-packed")
    assert torch.equal(logits(model), logits(expected))


def test_gpu_methods_fail_on_cpu_with_a_clear_message(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("bnb-int8", "bnb-nf4"):
        with pytest.raises(QuantizeError) as error:
            quantize_to_dir(tiny_model_dir, name, tmp_path / name)
        message = str(error.value)
        assert f"method {name!r} needs a CUDA GPU" in message
        assert "int8-packed" in message and "torch.cuda.is_available() is False" in message
        assert not (tmp_path / name).exists()


def test_unknown_methods_and_bad_records_are_named(tmp_path):
    with pytest.raises(
        QuantizeError, match="unknown quantization method 'int3'; known: int8-packed"
    ):
        get_method("int3")
    assert set(CPU_METHODS) | {"bnb-int8", "bnb-nf4"} == set(METHODS)
    assert check_available("int8-packed").bits == 8
    (tmp_path / RECORD_FILE).write_text(json.dumps({"format": "other", "method": "int8-packed"}))
    with pytest.raises(QuantizeError, match=r"quantization.json: field 'format' is 'other'"):
        load_quantized(tmp_path)
    with pytest.raises(QuantizeError, match="not a quantized model directory"):
        load_quantized(tmp_path / "missing")


def test_a_packed_file_with_a_foreign_tensor_is_refused(quantized, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, directory, _ = quantized["int8-packed"]
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    tensors = load_file(copy / PACKED_FILE)
    tensors["model.layers.0.self_attn.q_proj.extra"] = torch.zeros(2)
    save_file(tensors, copy / PACKED_FILE)
    with pytest.raises(
        QuantizeError, match="'model.layers.0.self_attn.q_proj.extra' is no parameter"
    ):
        load_quantized(copy)
