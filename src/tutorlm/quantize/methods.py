"""The quantization methods tutorlm offers, where each runs, and how each is applied.

| method | backend | bits | runs on | what is quantized |
| --- | --- | --- | --- | --- |
| ``int8-packed`` | PyTorch CPU kernels (:mod:`tutorlm.packed.layers`) | 8 | CPU | every linear, and the tied embedding / output layer |
| ``int4-packed`` | PyTorch CPU kernels | 4 (+8) | CPU | linears in 4 bits (group 32); tied embedding / output in 8 bits |
| ``int8-weight`` | torchao ``Int8WeightOnlyConfig`` | 8 | CPU, GPU | linears (not embeddings) |
| ``int8-dynamic`` | torchao ``Int8DynamicActivationInt8WeightConfig`` | 8 | CPU, GPU | linears; activations quantized per token at run time |
| ``int4-weight`` | torchao ``IntxWeightOnlyConfig(int4, PerGroup(32))`` | 4 | CPU, GPU | linears; values stored one per int8 byte |
| ``bnb-int8`` | bitsandbytes LLM.int8() | 8 | CUDA | linears |
| ``bnb-nf4`` | bitsandbytes NF4 (QLoRA's format), double quantization | 4 | CUDA | linears |

This module imports no torch at import time, so that recipes can validate
method names instantly.
"""

from __future__ import annotations

from dataclasses import dataclass

from tutorlm.errors import TutorlmError


class QuantizeError(TutorlmError, ValueError):
    """A quantization request that cannot be met here, with what to do instead."""


@dataclass(frozen=True)
class Method:
    """One quantization method."""

    name: str
    backend: str  # "packed" | "torchao" | "bitsandbytes"
    bits: int
    device: str  # "cpu" | "any" | "cuda"
    summary: str


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "int8-packed",
            "packed",
            8,
            "cpu",
            "int8 weights (per row) on torch's int8 CPU kernel, bf16 activations, int8 tied embedding",
        ),
        Method(
            "int4-packed",
            "packed",
            4,
            "cpu",
            "4-bit weights (group 32, asymmetric) on torch's int4 CPU kernel, int8 tied embedding",
        ),
        Method(
            "int8-weight",
            "torchao",
            8,
            "any",
            "torchao Int8WeightOnlyConfig (per-row int8 linears)",
        ),
        Method(
            "int8-dynamic",
            "torchao",
            8,
            "any",
            "torchao Int8DynamicActivationInt8WeightConfig (int8 x int8 matmuls)",
        ),
        Method(
            "int4-weight",
            "torchao",
            4,
            "any",
            "torchao IntxWeightOnlyConfig(int4, PerGroup(32)), stored unpacked in int8",
        ),
        Method("bnb-int8", "bitsandbytes", 8, "cuda", "bitsandbytes LLM.int8() linears (GPU)"),
        Method(
            "bnb-nf4",
            "bitsandbytes",
            4,
            "cuda",
            "bitsandbytes NF4 with double quantization, bf16 compute (GPU; QLoRA's format)",
        ),
    )
}

#: Methods a CPU-only machine can run, fastest int8 first.
CPU_METHODS = [name for name, method in METHODS.items() if method.device != "cuda"]


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise QuantizeError(
            f"unknown quantization method {name!r}; known: {', '.join(METHODS)}"
        ) from None


def cuda_available() -> bool:
    """Whether a CUDA device is usable (torch imported only when asked)."""
    from tutorlm.hardware import auto_device

    return auto_device() == "cuda"


def check_available(name: str, device: str | None = None) -> Method:
    """The method, after checking that this machine (or ``device`` on it) can run it.

    Args:
        name: a method name from :data:`METHODS`.
        device: the resolved device the quantized model will run on
            (``tutorlm.hardware.resolve_device``); None: any device this machine has.

    Raises:
        QuantizeError: for a GPU-only method without a CUDA device (or asked to run
            on the CPU), a CPU-only method asked to run on CUDA, or a missing backend
            package; the message names the alternatives that do run there.
    """
    import importlib.util

    method = get_method(name)
    on_cuda = None if device is None else str(device).startswith("cuda")
    if method.device == "cuda" and on_cuda is False and cuda_available():
        raise QuantizeError(
            f"method {name!r} needs a CUDA GPU: bitsandbytes quantizes and runs these "
            f"layers on the GPU, and the device is {device}. On CPU use one of: "
            f"{', '.join(CPU_METHODS)}; for this method set device: cuda (or auto)."
        )
    if method.device == "cuda" and not cuda_available():
        raise QuantizeError(
            f"method {name!r} needs a CUDA GPU: bitsandbytes quantizes and runs these "
            "layers on the GPU, and this machine has none (torch.cuda.is_available() is "
            f"False). On CPU use one of: {', '.join(CPU_METHODS)} "
            "(int8-packed is the fastest int8 path here)."
        )
    if method.device == "cpu" and on_cuda:
        gpu_methods = [other for other, m in METHODS.items() if m.device != "cpu"]
        raise QuantizeError(
            f"method {name!r} runs on torch's CPU kernels only, and the device is {device}. "
            f"On a GPU use one of: {', '.join(gpu_methods)}; for this method set device: cpu."
        )
    if method.backend == "bitsandbytes" and importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizeError(
            f"method {name!r} needs the bitsandbytes package: pip install 'tutorlm[gpu]'"
        )
    if method.backend == "torchao" and importlib.util.find_spec("torchao") is None:
        raise QuantizeError(f"method {name!r} needs the torchao package: pip install torchao")
    return method


def torchao_config(name: str):
    """The torchao config object behind a torchao method."""
    import torch
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup

    configs = {
        "int8-weight": lambda: Int8WeightOnlyConfig(),
        "int8-dynamic": lambda: Int8DynamicActivationInt8WeightConfig(),
        "int4-weight": lambda: IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(32)
        ),
    }
    if name not in configs:
        raise QuantizeError(f"{name!r} is not a torchao method")
    return configs[name]()


def load_time_config(name: str):
    """The ``quantization_config`` that makes ``from_pretrained`` quantize while loading.

    Used for the torchao and bitsandbytes methods: weights are quantized layer by
    layer as they are read, so the full-precision model never sits in memory.
    """
    method = check_available(name)
    if method.backend == "torchao":
        from transformers import TorchAoConfig

        return TorchAoConfig(quant_type=torchao_config(name))
    if method.backend == "bitsandbytes":
        import torch
        from transformers import BitsAndBytesConfig

        if name == "bnb-int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    raise QuantizeError(f"{name!r} quantizes after loading, not at load time")


def pack_model(
    model, bits: int, *, embeddings: bool = True, group: int | None = None
) -> dict[str, str]:
    """Replace a float model's layers by packed int8 / int4 layers, in place.

    Args:
        model: a transformers causal LM in float precision (merge adapters first).
        bits: 8 or 4 (4: linears in 4 bits; layers whose shape the int4 kernel
            refuses, and the embedding, in 8 bits).
        embeddings: also quantize the input embedding and the output layer.
        group: int4 group size (default 32).

    Returns:
        The layout ``{module name: kind}`` with kinds ``int8``, ``int4``,
        ``int8-embedding`` and ``tied`` (an output layer reading the embedding's
        matrix): what a loader needs to rebuild the same modules.
    """
    from torch import nn

    from tutorlm.packed import layers as packed

    if bits not in (4, 8):
        raise QuantizeError(f"packed quantization has 8 or 4 bits, not {bits}")
    group = group or packed.INT4_GROUP
    names = {module: name for name, module in model.named_modules()}
    input_embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is input_embedding.weight
    layout: dict[str, str] = {}

    def quantize_linear(name: str, linear: nn.Linear) -> None:
        if bits == 4 and packed.int4_supported(linear, group):
            model.set_submodule(name, packed.PackedInt4Linear.from_linear(linear, group))
            layout[name] = "int4"
        else:
            model.set_submodule(name, packed.PackedInt8Linear.from_linear(linear))
            layout[name] = "int8"

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module is not output:
            quantize_linear(name, module)
    if embeddings:
        embedding = packed.PackedInt8Embedding.from_embedding(input_embedding)
        model.set_submodule(names[input_embedding], embedding)
        layout[names[input_embedding]] = "int8-embedding"
        if tied:
            model.set_submodule(names[output], packed.tied_output_layer(embedding))
            layout[names[output]] = "tied"
        elif isinstance(output, nn.Linear):
            quantize_linear(names[output], output)
    return layout
