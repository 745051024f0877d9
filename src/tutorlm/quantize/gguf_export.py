"""Export a Llama-architecture model to a GGUF file for llama.cpp and Ollama.

Written with the ``gguf`` package from PyPI (the same writer and quantizers that
llama.cpp's own ``convert_hf_to_gguf.py`` uses), so no llama.cpp build is
needed. It covers what tutorlm trains by default: ``LlamaForCausalLM``
(SmolLM2, TinyLlama, Llama) with a byte-level BPE tokenizer. Other
architectures get an error that gives llama.cpp's converter command instead
(see ``docs/quantize.md``).

What the file holds, following llama.cpp's converter:

- hyperparameters under ``llama.*``; the tokenizer as ``gpt2`` BPE (tokens,
  types, merges, special ids) and the chat template, so that llama.cpp renders
  prompts exactly as training did;
- q and k projections permuted from Hugging Face's rotary layout (halves) to
  llama.cpp's (interleaved pairs);
- 1-D tensors (norms) in F32; matrices in the chosen type. For ``q4_0`` /
  ``q4_1`` the token embedding (also the output layer when tied) is written in
  ``Q8_0``, as in the GGUF the bundled model ships in: the output layer is the
  most sensitive to 4-bit rounding.

The round trip is checked by loading the file back with transformers
(``from_pretrained(..., gguf_file=...)``, which dequantizes it) and comparing
logits with the source model.
"""

from __future__ import annotations

import json
from pathlib import Path

from tutorlm.quantize.methods import QuantizeError

QTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
LLAMA_CPP_HINT = (
    "convert it with llama.cpp instead: python convert_hf_to_gguf.py MODEL_DIR --outtype q8_0 "
    "--outfile model.gguf (then llama-quantize for K-quants)"
)
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for a Hugging Face Llama tensor (None for tensors it does not keep)."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"]:
        inner = ".".join(parts[3:-1])
        if inner in _LAYER_TENSORS:
            return f"blk.{parts[2]}.{_LAYER_TENSORS[inner]}.{parts[-1]}"
    return None


def permute_rotary(weight, heads: int):
    """HF's rotary layout (two halves per head) to llama.cpp's (adjacent pairs)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _tensor_type(name: str, array, qtype: str):
    import gguf

    types = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
    }
    if array.ndim == 1:
        return gguf.GGMLQuantizationType.F32
    if qtype.startswith("q4") and name == "token_embd.weight":
        qtype = "q8_0"
    chosen = types[qtype]
    block = gguf.GGML_QUANT_SIZES[chosen][0]
    if array.shape[-1] % block:  # rows that do not split into blocks stay in 16 bits
        return gguf.GGMLQuantizationType.F16
    return chosen


def _tokenizer_fields(source: Path, vocab_size: int) -> dict:
    """Tokens, types, merges and special ids from ``tokenizer.json`` / ``tokenizer_config.json``."""
    import gguf

    from tutorlm.models import load_tokenizer

    data = json.loads((source / "tokenizer.json").read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise QuantizeError(
            f"{source}/tokenizer.json: GGUF export handles BPE tokenizers only; {LLAMA_CPP_HINT}"
        )
    by_id = {index: token for token, index in model["vocab"].items()}
    special = set()
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special"):
            special.add(added["id"])
    tokens, types = [], []
    for index in range(vocab_size):
        if index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if index in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tokenizer = load_tokenizer(source)
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
        "add_bos": bool(getattr(tokenizer, "add_bos_token", False)),
        "chat_template": tokenizer.chat_template,
    }


def _pre_tokenizer(tokens: list[str]) -> str:
    """llama.cpp's pre-tokenizer name: ``smollm`` for SmolLM's vocabulary, else ``default``.

    llama.cpp picks the pre-tokenizer regex by name (its converter recognises a
    tokenizer by hashing how it splits a test text); ``default`` is GPT-2's regex.
    """
    smollm_markers = {1: "<|im_start|>", 2: "<|im_end|>", 3: "<repo_name>"}
    if len(tokens) == 49152 and all(tokens[i] == t for i, t in smollm_markers.items()):
        return "smollm"
    return "default"


def export_gguf(spec, out_path, *, qtype: str = "q8_0", online: bool | None = None) -> dict:
    """Write ``spec`` (model, directory or LoRA adapter, merged first) as a GGUF file.

    Returns:
        ``{"path", "qtype", "bytes", "tensors", "pre_tokenizer"}``.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open

    from tutorlm.quantize.saving import float_source

    if qtype not in QTYPES:
        raise QuantizeError(f"GGUF type {qtype!r} is not one of {', '.join(QTYPES)}")
    out_path = Path(out_path)
    with float_source(spec, online=online) as (source, _):
        config = json.loads((source / "config.json").read_text())
        architecture = (config.get("architectures") or ["?"])[0]
        if architecture != "LlamaForCausalLM":
            raise QuantizeError(
                f"GGUF export supports LlamaForCausalLM, not {architecture}; {LLAMA_CPP_HINT}"
            )
        heads, kv_heads = (
            config["num_attention_heads"],
            config.get("num_key_value_heads") or config["num_attention_heads"],
        )
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        vocab = _tokenizer_fields(source, config["vocab_size"])
        file_type = {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
            "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
        }[qtype]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(Path(str(spec)).name)
        writer.add_context_length(config.get("max_position_embeddings", 2048))
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_freq_base(
            float(
                (config.get("rope_parameters") or {}).get("rope_theta")
                or config.get("rope_theta", 10000.0)
            )
        )
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config["vocab_size"])
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        pre = _pre_tokenizer(vocab["tokens"])
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        for key, add in (
            ("bos", writer.add_bos_token_id),
            ("eos", writer.add_eos_token_id),
            ("pad", writer.add_pad_token_id),
            ("unk", writer.add_unk_token_id),
        ):
            if vocab[key] is not None:
                add(vocab[key])
        writer.add_add_bos_token(vocab["add_bos"])
        if vocab["chat_template"]:
            writer.add_chat_template(vocab["chat_template"])
        names = []
        for shard in sorted(source.glob("*.safetensors")):
            with safe_open(shard, framework="pt") as handle:
                for hf_name in list(handle.keys()):
                    name = gguf_name(hf_name)
                    if name is None or (
                        name == "output.weight" and config.get("tie_word_embeddings", True)
                    ):
                        continue
                    array = handle.get_tensor(hf_name).float().numpy()
                    if name.endswith("attn_q.weight"):
                        array = permute_rotary(array, heads)
                    elif name.endswith("attn_k.weight"):
                        array = permute_rotary(array, kv_heads)
                    kind = _tensor_type(name, array, qtype)
                    data = gguf.quants.quantize(np.ascontiguousarray(array), kind)
                    writer.add_tensor(name, data, raw_dtype=kind)
                    names.append(name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out_path)
    return {
        "path": str(out_path),
        "qtype": qtype,
        "bytes": out_path.stat().st_size,
        "tensors": len(names),
        "pre_tokenizer": pre,
    }
