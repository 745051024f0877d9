"""A step decoder for Llama-family models: many requests, one forward, a KV cache per slot.

``model.generate`` decodes one batch from start to end, and its per-token Python
(cache objects, logits processors, stopping criteria, masks rebuilt every step)
costs more than the arithmetic of a small model on a CPU: the demo's 135M model
spends ~60 % of each token outside the matmuls. This decoder keeps only the
arithmetic. It reads the model's own modules (float ``nn.Linear`` or the packed
int8/int4 layers, found by their attributes), fuses q/k/v and gate/up into one
projection each, and runs a *ragged* forward: every call takes a list of
segments, each a run of tokens of one request at its own position, flattens
their tokens into one matrix for the projections (weights are read once for all
requests) and attends per segment. A decoding request is a segment of one token;
a new prompt is a segment of up to ``prefill_chunk`` tokens, so a long prompt
joins the running replies chunk by chunk instead of stalling them.

The arithmetic is the model's own: RMSNorm, rotary tables and activation come from
its modules, activations stay in the model's float dtype, and a packed layer's
matmul is the one its ``forward`` runs (so logits match ``model(...)`` up to the
summation order of the fused projections).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

from tutorlm.packed.layers import KERNEL_MAX_ROWS

SUPPORTED_TYPES = ("llama", "qwen2", "mistral")

KEEP_BF16_UP_TO = 2**30
"""Packed layer bytes up to which the decoder keeps a bf16 copy of their weights for
reading prompts (int8: the copy the layer expands anyway, same values; int4: the
kernel's own values rounded to bf16, since its kernel is slow on many rows). A
1B-parameter int8 model's copy costs 2 GiB more."""

DECODE_MAX_ROWS = KERNEL_MAX_ROWS
"""Most rows one decoding forward should take: up to it the packed layers run their
int8 kernel, which computes every row on its own (the same reply batched or alone);
above it they switch to a bf16 matmul over the whole batch."""


def unsupported_reason(model) -> str | None:
    """Why this decoder cannot run ``model``; None when it can."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        return f"model type {model_type!r} (the step decoder knows {', '.join(SUPPORTED_TYPES)})"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if any(p.device.type != "cpu" for p in model.parameters()):
        return "a model on a GPU (the step decoder is the CPU path)"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no decoder layers or rotary embedding where a Llama model keeps them"
    for name, module in inner.layers[0].named_modules():
        if name.endswith("_proj") and not _projection_kind(module):
            return f"{name} is a {type(module).__name__} (LoRA adapters are merged first)"
    return None


def _projection_kind(module) -> str | None:
    """``float``, ``int8`` or ``int4`` for a layer the decoder can fuse and call."""
    if type(module) is torch.nn.Linear:
        return "float"
    if hasattr(module, "qweight") and hasattr(module, "matmul_bf16"):
        return "int8"
    if hasattr(module, "scale_and_zero") and hasattr(module, "matmul_bf16"):
        return "int4"
    return None


@dataclass
class Segment:
    """A run of tokens of one request: ``tokens`` at positions ``start``, ``start + 1``, ...
    written into cache slot ``slot``."""

    slot: int
    start: int
    tokens: list[int]


def _fused(layers: list) -> object:
    """One projection computing ``layers`` side by side (their outputs concatenated).

    Same layer kind as the inputs, so the matmul is the one each would have run:
    float ``nn.Linear`` rows concatenated, int8 rows and their scales
    concatenated, int4 nibbles re-packed with their (scale, zero) groups.
    """
    first = layers[0]
    kind = _projection_kind(first)
    bias = None
    if first.bias is not None:
        bias = torch.cat([layer.bias.detach() for layer in layers])
    if kind == "float":
        fused = torch.nn.Linear(first.in_features, 1, bias=False, dtype=first.weight.dtype)
        fused.weight = torch.nn.Parameter(
            torch.cat([layer.weight.detach() for layer in layers]), requires_grad=False
        )
        fused.out_features = fused.weight.shape[0]
    elif kind == "int8":  # int8 rows, one scale per output row
        out = sum(layer.out_features for layer in layers)
        fused = type(first)(first.in_features, out, bias=False)
        fused.qweight = torch.cat([layer.qweight for layer in layers])
        fused.scale = torch.cat([layer.scale for layer in layers])
    elif kind == "int4":  # int4 groups in the kernel's own layout
        out = sum(layer.out_features for layer in layers)
        fused = type(first)(first.in_features, out, False, first.group)
        fused.load_nibbles(torch.cat([layer.nibbles() for layer in layers]))
        fused.scale_and_zero = torch.cat([layer.scale_and_zero for layer in layers], dim=1)
    else:
        raise TypeError(f"no fused form for {type(first).__name__}")
    if bias is not None:
        fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    return fused


class _Projection:
    """A linear layer as the decoder calls it, without a module call's casts and hooks:
    ``input_dtype`` is what its matmul reads (bf16 for the packed kernels, the weight's
    dtype for ``nn.Linear``); the caller casts once, and the output keeps the matmul's
    dtype (adding it to the float residual promotes it exactly, as the layer's own
    ``out.to(x.dtype)`` would)."""

    def __init__(self, module, keep_bf16: bool = False):
        self.bias = None if module.bias is None else module.bias.detach()
        self.prompt_weight = None
        """Packed layers: the bf16 weight prompt chunks (more than ``DECODE_MAX_ROWS``
        rows) are multiplied by. int8: the very weight the layer expands for such rows
        on every call, kept; int4: the kernel's own values in bf16 (its kernel is slow
        on many rows)."""
        if keep_bf16 and _projection_kind(module) in ("int8", "int4"):
            self.prompt_weight = module.dequantized()
        if hasattr(module, "matmul_bf16"):  # packed int8 / int4
            self.input_dtype, self.matmul = torch.bfloat16, module.matmul_bf16
        else:
            weight = module.weight.detach()
            self.input_dtype = weight.dtype
            self.matmul = lambda rows: functional.linear(rows, weight)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(self.input_dtype)
        if self.prompt_weight is not None and rows.shape[0] > DECODE_MAX_ROWS:
            out = functional.linear(rows, self.prompt_weight)
        else:
            out = self.matmul(rows)
        return out if self.bias is None else out + self.bias


class _Layer:
    """One decoder layer's weights, as the decoder calls them."""

    def __init__(self, layer, keep_bf16: bool):
        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm = _rms_norm(layer.input_layernorm)
        self.post_norm = _rms_norm(layer.post_attention_layernorm)
        qkv = _fused([attention.q_proj, attention.k_proj, attention.v_proj])
        self.qkv = _Projection(qkv, keep_bf16)
        self.o = _Projection(attention.o_proj, keep_bf16)
        self.gate_up = _Projection(_fused([mlp.gate_proj, mlp.up_proj]), keep_bf16)
        self.down = _Projection(mlp.down_proj, keep_bf16)
        self.act = mlp.act_fn
        self.scaling = attention.scaling


class StepDecoder:
    """Ragged forward passes over ``slots`` KV caches of ``max_len`` positions each.

    Args:
        model: a loaded Llama-family causal LM (see :func:`unsupported_reason`).
        slots: requests that can be in flight at once.
        max_len: positions per slot (prompt and reply); default the model's context.
        keep_bf16: packed layers keep a bf16 copy of their weight for prompt chunks
            (``KEEP_BF16_UP_TO``: int8 ~2x, int4 ~3x faster prompt reading, 2 more
            bytes per weight); None: when their packed weights take at most
            ``KEEP_BF16_UP_TO`` bytes.
    """

    def __init__(
        self,
        model,
        *,
        slots: int = 8,
        max_len: int | None = None,
        keep_bf16: bool | None = None,
    ):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the step decoder cannot run this model: {reason}")
        config, inner = model.config, model.model
        self.context = config.max_position_embeddings
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        embedding = inner.embed_tokens
        self.dtype = getattr(embedding, "output_dtype", None) or embedding.weight.dtype
        self.embed = inner.embed_tokens.forward
        self.norm = _rms_norm(inner.norm)
        self.lm_head = _Projection(model.lm_head)
        if keep_bf16 is None:
            packed = ("qweight", "packed")  # int8 rows, int4 nibbles in the kernel's layout
            held = sum(b.nbytes for n, b in inner.layers.named_buffers() if n.endswith(packed))
            keep_bf16 = held <= KEEP_BF16_UP_TO
        self.layers = [_Layer(layer, keep_bf16) for layer in inner.layers]
        with torch.inference_mode():
            positions = torch.arange(self.context)[None]  # (1, C)
            probe = torch.zeros(1, 1, self.head_dim, dtype=self.dtype)
            cos, sin = inner.rotary_emb(probe, positions)  # (1, L, D) each
        half = self.head_dim // 2
        self.cos = cos[0]  # (C, D)
        self.signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # (C, D)
        self.slots, self.max_len = 0, 0
        self.reserve(slots, max_len or self.context)

    def reserve(self, slots: int, max_len: int) -> None:
        """Caches for at least ``slots`` slots of ``max_len`` positions (at most the
        model's context). Growing them drops what they held: call between runs."""
        max_len = min(max_len, self.context)
        if slots <= self.slots and max_len <= self.max_len:
            return
        self.slots, self.max_len = max(slots, self.slots), max(max_len, self.max_len)
        shape = (self.slots, self.kv_heads, self.max_len, self.head_dim)
        self.keys = [torch.empty(shape, dtype=self.dtype) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=self.dtype) for _ in self.layers]

    @torch.inference_mode()
    def forward(self, segments: list[Segment]) -> torch.Tensor:
        """Run every segment's tokens, write their keys and values into their slots,
        and return the logits after each segment's last token, ``(len(segments), V)``.

        A segment attends to its slot's positions ``0 .. start + len(tokens) - 1``:
        the caller keeps each slot's earlier positions filled (by earlier calls).
        """
        for segment in segments:
            end = segment.start + len(segment.tokens)
            if not segment.tokens or end > self.max_len:
                raise ValueError(
                    f"segment of slot {segment.slot} ends at {end}, past {self.max_len} positions"
                )
        ids = torch.tensor([t for s in segments for t in s.tokens])  # (N,)
        positions = torch.cat(
            [torch.arange(s.start, s.start + len(s.tokens)) for s in segments]
        )  # (N,)
        cos, sin = self.cos[positions][:, None], self.signed_sin[positions][:, None]  # (N, 1, D)
        bounds, offset = [], 0
        for s in segments:
            bounds.append((offset, offset + len(s.tokens)))
            offset += len(s.tokens)
        masks = [self._mask(s) for s in segments]
        hidden = self.embed(ids)  # (N, H)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        rotated_heads = heads + kv_heads
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.input_norm(hidden)).to(self.dtype)
            qkv = qkv.view(-1, rotated_heads + kv_heads, dim)
            qk = _rotate(qkv[:, :rotated_heads], cos, sin)  # (N, h + kv, D)
            q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, rotated_heads:]
            keys, values = self.keys[index], self.values[index]
            outputs = []
            for s, (lo, hi), mask in zip(segments, bounds, masks, strict=True):
                end = s.start + hi - lo
                slot_keys, slot_values = keys[s.slot], values[s.slot]  # (kv, L, D)
                slot_keys[:, s.start : end] = k[lo:hi].transpose(0, 1)
                slot_values[:, s.start : end] = v[lo:hi].transpose(0, 1)
                out = functional.scaled_dot_product_attention(
                    q[lo:hi].transpose(0, 1)[None],  # (1, h, T, D)
                    slot_keys[None, :, :end],  # (1, kv, end, D)
                    slot_values[None, :, :end],
                    attn_mask=mask,
                    scale=layer.scaling,
                    enable_gqa=True,
                )  # (1, h, T, D)
                outputs.append(out[0].transpose(0, 1).reshape(hi - lo, heads * dim))
            attended = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
            hidden = hidden + layer.o(attended)
            gate, up = layer.gate_up(layer.post_norm(hidden)).to(self.dtype).chunk(2, dim=-1)
            hidden = hidden + layer.down(layer.act(gate) * up)
        last = torch.tensor([hi - 1 for _, hi in bounds])
        return self.lm_head(self.norm(hidden[last])).float()  # (S, V)

    def _mask(self, segment: Segment) -> torch.Tensor | None:
        """Causal mask of a segment over its slot's positions; None for one token
        (it sees every position written so far)."""
        count = len(segment.tokens)
        if count == 1:
            return None
        end = segment.start + count
        rows = torch.arange(segment.start, end)[:, None]  # (T, 1)
        return torch.arange(end)[None] <= rows  # (T, end) True = may attend


def _rms_norm(module):
    """The module's RMSNorm as Llama computes it, without the module call. (The
    fused ``torch.rms_norm`` is slower on a CPU for one row: ~20 us against ~8.)"""
    weight = module.weight.detach()
    eps = getattr(module, "variance_epsilon", None) or module.eps

    def norm(x: torch.Tensor) -> torch.Tensor:
        wide = x.float()  # the same object for float32 activations
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
        return weight * normed.to(x.dtype)

    return norm


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half-split convention of Llama's ``rotate_half``:
    ``rotate_half(x) * sin`` is ``roll(x, D/2) * signed_sin`` with the first half of
    ``sin`` negated (an exact sign flip), one op instead of four."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin
