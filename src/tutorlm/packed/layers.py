"""int8 and int4 weight-only layers on PyTorch's own CPU kernels, with bf16 activations.

Why these exist next to torchao: on a CPU, torchao 0.18's weight-only layers run
in eager mode by converting the whole int8 (or int4-in-int8) weight back to float
on every call and then doing a float matmul, so an int8 model generates slower
than fp32 (figures in ``docs/benchmarks.md``). PyTorch ships
real mixed-precision CPU kernels that read the quantized weight directly:

- ``torch._weight_int8pack_mm(x_bf16, w_int8 (N, K), scale_bf16 (N,))``: int8
  weights with one scale per output row (its fast path wants bf16 activations;
  fp32 activations take a slow fallback);
- ``torch._weight_int4pack_mm_for_cpu(x_bf16, packed, group, scale_and_zero)``:
  4-bit weights, asymmetric, one bf16 (scale, zero) per group of ``group``
  inputs; the weight is packed by ``torch._convert_weight_to_int4pack_for_cpu``
  into a CPU-specific blocked layout.

So only the matmul inputs become bf16; the residual stream, norms, attention and
softmax stay in the model's own float dtype.

Tied embeddings. A small model's token embedding is a large share of its
weights (49,152 x 576 = 28M of SmolLM2-135M's 135M), and with tied embeddings
the same matrix is the output layer. An int8 matrix with one scale per *row*
serves both uses: a row is one token's embedding (lookup = gather + scale) and
one output logit's weights (the kernel's per-output-row scale). So the tied
pair is stored once, in int8, also by the int4 method: 8 bits keep the output
layer (the layer most sensitive to quantization) close to exact, and an int4
copy could not be gathered row by row from the kernel's blocked layout.

Storage. Saved files hold portable tensors only: int8 matrices, int4 values two
per byte in plain row-major order (low nibble first), bf16 scales and zeros.
The CPU-specific int4 layout is rebuilt when a model is loaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

#: Rows of activations up to which the int8 kernel is used; above it (prefill,
#: scoring) the weight is expanded to bf16 for one oneDNN bf16 matmul, which is
#: faster than both the int8 kernel and fp32 at that size.
KERNEL_MAX_ROWS = 16
INT4_GROUP = 32


def _bf16_round(values: torch.Tensor) -> torch.Tensor:
    """Values as the kernels will see them (bf16), kept in fp32 for the arithmetic."""
    return values.to(torch.bfloat16).float()


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per row: ``weight ~= qweight * scale[:, None]``.

    The scale is rounded to bf16 *before* the weights are rounded, so the int8
    values are the best ones for the scale the kernel really uses.

    Returns:
        ``(qweight int8 (N, K), scale bf16 (N,))``.
    """
    weight = weight.detach().float()
    scale = _bf16_round(weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0)
    qweight = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return qweight, scale.to(torch.bfloat16)


def quantize_int4_groups(weight: torch.Tensor, group: int = INT4_GROUP):
    """Asymmetric 4-bit with a (scale, zero) per group of ``group`` inputs.

    ``weight ~= (q - 8) * scale + zero`` with ``q`` in 0..15 (the convention of
    ``_weight_int4pack_mm_for_cpu``); each group's minimum and maximum land on
    the grid, which keeps weights that were already 4-bit (the bundled model
    comes from a Q4_1 GGUF) close to exact: exact when the bf16 scale and zero
    hold the group's step and offset, else off by at most bf16 rounding of the
    zero (a group whose range is tiny next to its offset loses the most).

    Returns:
        ``(q uint8 (N, K), scale_and_zero bf16 (K // group, N, 2))``.
    """
    weight = weight.detach().float()
    rows, cols = weight.shape
    grouped = weight.reshape(rows, cols // group, group)  # (N, G, group)
    low = grouped.amin(dim=-1)
    high = grouped.amax(dim=-1)
    scale = _bf16_round(((high - low) / 15.0).clamp(min=1e-12))  # (N, G)
    zero = _bf16_round(low + 8.0 * scale)
    q = torch.round((grouped - zero[..., None]) / scale[..., None]) + 8
    q = q.clamp(0, 15).to(torch.uint8).reshape(rows, cols)
    scale_and_zero = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return q, scale_and_zero.to(torch.bfloat16)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, K) values 0..15 -> (N, K/2) bytes, low nibble = even column."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: (N, K/2) bytes -> (N, K) int32 values 0..15."""
    low = (packed & 0x0F).to(torch.int32)
    high = (packed >> 4).to(torch.int32)
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


def int4_supported(linear: nn.Linear, group: int = INT4_GROUP) -> bool:
    """The CPU int4 kernel needs K divisible by the group and N by 16."""
    return linear.in_features % group == 0 and linear.out_features % 16 == 0


class PackedInt8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` int8, one bf16 scale per output row.

    Args:
        in_features, out_features: the layer's shape.
        bias: whether the layer has a bias (kept in the model's float dtype).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.bfloat16))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedInt8Linear:
        """Quantize an ``nn.Linear``."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.qweight, layer.scale = quantize_int8_rows(linear.weight)
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def dequantized(self) -> torch.Tensor:
        """The weight the layer computes with, as bf16 (N, K)."""
        return self.qweight.to(torch.bfloat16) * self.scale[:, None]

    def matmul_bf16(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows W^T`` for bf16 ``rows`` (M, K): bf16 (M, N), no bias. The whole
        arithmetic of the layer, shared with ``tutorlm.decoder`` (which keeps its
        activations in bf16 between the norm and the matmul)."""
        if rows.shape[0] <= KERNEL_MAX_ROWS:
            return torch._weight_int8pack_mm(rows, self.qweight, self.scale)
        return functional.linear(rows, self.dequantized())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.matmul_bf16(x.reshape(-1, self.in_features).to(torch.bfloat16))  # (M, N)
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-row, bias={self.bias is not None}"


class PackedInt4Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` 4-bit, a bf16 (scale, zero) per group of inputs.

    ``packed`` is the kernel's own blocked layout, the only copy held in memory;
    :meth:`nibbles` turns it back into the portable form that files store.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, group: int = INT4_GROUP
    ):
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.register_buffer(
            "packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
        )
        self.register_buffer(
            "scale_and_zero",
            torch.zeros(in_features // group, out_features, 2, dtype=torch.bfloat16),
        )
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = INT4_GROUP) -> PackedInt4Linear:
        """Quantize an ``nn.Linear`` (see :func:`int4_supported` for the shapes allowed)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group)
        q, layer.scale_and_zero = quantize_int4_groups(linear.weight, group)
        layer.packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def load_nibbles(self, nibbles: torch.Tensor) -> None:
        """Set the weight from portable nibbles (N, K/2) as saved on disk."""
        self.packed = torch._convert_weight_to_int4pack_for_cpu(unpack_nibbles(nibbles), 1)

    def nibbles(self) -> torch.Tensor:
        """The weight as portable nibbles (N, K/2), read back through the kernel itself.

        With every scale 1 and every zero 8 the kernel's ``(q - 8) * scale + zero``
        is ``q``, a small integer that bf16 holds exactly, so multiplying the
        identity by the layer returns the stored values without any rounding.
        """
        groups = self.in_features // self.group
        unit = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand(groups, self.out_features, 2)
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        q_t = torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, unit.contiguous())
        return pack_nibbles(q_t.t().round().to(torch.uint8))  # (N, K/2)

    def dequantized(self) -> torch.Tensor:
        """The weight as bf16 (N, K): each ``(q - 8) * scale + zero`` as the kernel
        computes it, rounded to bf16 (read back by multiplying the identity)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        weight_t = torch._weight_int4pack_mm_for_cpu(
            eye, self.packed, self.group, self.scale_and_zero
        )  # (K, N)
        return weight_t.t().contiguous()

    def matmul_bf16(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows W^T`` for bf16 ``rows`` (M, K): bf16 (M, N), no bias."""
        return torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group, self.scale_and_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.matmul_bf16(x.reshape(-1, self.in_features).to(torch.bfloat16))
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 group {self.group}, bias={self.bias is not None}"


class PackedInt8Embedding(nn.Module):
    """Token embedding stored as int8 rows with one bf16 scale per token.

    Shares its ``qweight`` and ``scale`` with a tied :class:`PackedInt8Linear`
    output layer (see the module docstring).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = (
            num_embeddings,
            embedding_dim,
            padding_idx,
        )
        self.register_buffer(
            "qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8)
        )
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=torch.bfloat16))
        self.output_dtype = torch.float32

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> PackedInt8Embedding:
        """Quantize an ``nn.Embedding``; lookups return its original float dtype."""
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        layer.qweight, layer.scale = quantize_int8_rows(embedding.weight)
        layer.output_dtype = embedding.weight.dtype
        return layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight[ids].to(torch.float32) * self.scale[ids].to(torch.float32)[..., None]
        return rows.to(self.output_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


def tied_output_layer(embedding: PackedInt8Embedding) -> PackedInt8Linear:
    """An output layer that reads the embedding's own int8 matrix (no copy)."""
    layer = PackedInt8Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False)
    layer.qweight, layer.scale = embedding.qweight, embedding.scale
    return layer
