"""Read a directory the quantize stage wrote: its ``quantization.json``, and for the
``*-packed`` methods the model rebuilt module by module from ``packed.safetensors``.

The directory's format (written by ``tutorlm.quantize.saving``):

- ``quantization.json``: ``format`` (:data:`FORMAT`), ``method``, ``backend``
  (``packed``, ``torchao`` or ``bitsandbytes``), ``source``, ``float_dtype``,
  ``layout`` (packed methods: ``{module name: kind}``), ``weights`` (the weights
  file, or null when only the recipe to rebuild them was kept), ...;
- ``config.json``, ``generation_config.json`` and the tokenizer files;
- ``packed.safetensors`` (packed methods): int8 matrices, int4 values two per byte
  (``<module>.nibbles``), bf16 scales and zeros, the tied output layer stored once
  (as the embedding). It is deliberately not ``model.safetensors``: plain
  ``from_pretrained`` would load it into float layers with every weight missing.

This module sits below the stages so that :func:`tutorlm.models.load_model` loads
these copies for every stage; it imports no torch at import time.
"""

from __future__ import annotations

import json
from pathlib import Path

from tutorlm.errors import TutorlmError

RECORD_FILE = "quantization.json"
PACKED_FILE = "packed.safetensors"
FORMAT = "tutorlm.quantized/1"
LAYOUT_KINDS = ("int8", "int4", "int8-embedding", "tied")
"""Module kinds of a packed layout: an int8 or int4 linear, the int8 input embedding,
and an output layer reading that embedding's matrix (tied embeddings)."""


class QuantizedModelError(TutorlmError, ValueError):
    """A quantized model directory that cannot be loaded here, with the reason."""


def is_quantized_dir(path) -> bool:
    """Whether ``path`` is a directory the quantize stage wrote (it has a record)."""
    return (Path(path) / RECORD_FILE).is_file()


def read_record(path) -> dict:
    """The ``quantization.json`` of a quantized directory, checked.

    Raises:
        QuantizedModelError: no record, not JSON, another format, or a required
            field missing.
    """
    record_path = Path(path) / RECORD_FILE
    if not record_path.is_file():
        raise QuantizedModelError(f"{path}: not a quantized model directory (no {RECORD_FILE})")
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as error:
        raise QuantizedModelError(f"{record_path}: not valid JSON: {error}") from None
    if record.get("format") != FORMAT:
        raise QuantizedModelError(
            f"{record_path}: field 'format' is {record.get('format')!r}, expected {FORMAT!r}"
        )
    for field in ("method", "source"):
        if field not in record:
            raise QuantizedModelError(f"{record_path}: missing field {field!r}")
    return record


def build_packed_skeleton(
    model, layout: dict[str, str], float_dtype, group: int | None = None
) -> None:
    """Put empty packed modules (on the meta device) where ``layout`` says.

    The saved tensors are then assigned into them, so loading never allocates a
    second copy of the weights.
    """
    import torch

    from tutorlm.packed import layers

    group = group or layers.INT4_GROUP
    for name, kind in layout.items():
        old = model.get_submodule(name)
        with torch.device("meta"):
            if kind == "int8":
                new = layers.PackedInt8Linear(
                    old.in_features, old.out_features, old.bias is not None
                )
            elif kind == "int4":
                new = layers.PackedInt4Linear(
                    old.in_features, old.out_features, old.bias is not None, group
                )
            elif kind == "int8-embedding":
                new = layers.PackedInt8Embedding(
                    old.num_embeddings, old.embedding_dim, old.padding_idx
                )
                new.output_dtype = float_dtype
            elif kind == "tied":
                continue  # pointed at the embedding's matrix once that is loaded
            else:
                raise QuantizedModelError(f"unknown packed layer kind {kind!r} for {name}")
        model.set_submodule(name, new)


def load_quantized_dir(path, device: str | None = None):
    """A quantize-stage copy with its weights saved, loaded as the quantize stage does,
    in eval mode. The one loader of these copies: ``tutorlm.models.load_causal_lm``
    and ``tutorlm.quantize.saving.load_quantized`` both come here.

    Packed methods: rebuilt by :func:`load_packed` (torch's CPU kernels: any other
    device is refused). torchao: ``from_pretrained`` in fp32, which rebuilds its
    tensor subclasses from the safetensors (placed on a GPU while loading when
    ``device`` is one). bitsandbytes: ``from_pretrained`` in bf16 onto a GPU (its
    layers exist there only; ``device`` None means the GPU). Safetensors only, no
    folder code run, as every tutorlm load.

    Raises:
        QuantizedModelError: a bad record, a device the method cannot run on, a
            missing backend package, or a record kept without its weights (the
            quantize stage rebuilds those: ``load_quantized``).
    """
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    record = read_record(path)
    method = record["method"]
    backend = record.get("backend") or _backend_of(method)
    on_cuda = device is not None and str(device).startswith("cuda")
    if backend == "packed":
        if device is not None and str(device) != "cpu":
            raise QuantizedModelError(
                f"{path} is an {method} copy: its layers run on torch's CPU kernels only, "
                f"and the device is {device}. Run it on the CPU (--device cpu, or device: cpu "
                "in the recipe), or quantize for the GPU with int8-weight or int4-weight."
            )
        return load_packed(path, record)
    _require_weights(path, record)
    options: dict = {"use_safetensors": True, "trust_remote_code": False}
    if backend == "bitsandbytes":
        if (device is not None and not on_cuda) or not torch.cuda.is_available():
            raise QuantizedModelError(
                f"{path} is a bitsandbytes {method} copy: its layers exist on a CUDA GPU only "
                f"(device {device or 'cuda'}, torch.cuda.is_available() is "
                f"{torch.cuda.is_available()}). On a CPU use an int8-packed or int4-packed copy."
            )
        options.update(dtype=torch.bfloat16, device_map=device or "cuda")
    elif importlib.util.find_spec("torchao") is None:
        raise QuantizedModelError(f"{path} is a torchao {method} copy: pip install torchao")
    else:
        options.update(dtype=torch.float32, **({"device_map": device} if on_cuda else {}))
    if not any(path.glob("*.safetensors")):
        raise QuantizedModelError(f"{path}: no .safetensors weights; tutorlm loads no others")
    model = AutoModelForCausalLM.from_pretrained(path, **options)
    if device is not None and not on_cuda:
        model = model.to(device)
    return model.eval()


def _backend_of(method: str) -> str:
    """The backend of a method, for a record that does not name it."""
    if method.endswith("-packed"):
        return "packed"
    return "bitsandbytes" if method.startswith("bnb-") else "torchao"


def _require_weights(path: Path, record: dict) -> None:
    if record.get("weights") is None:
        raise QuantizedModelError(
            f"{path}: no weights saved ({RECORD_FILE} 'weights' is null), only the "
            "recipe to rebuild them; tutorlm serve / chat rebuild it "
            "(tutorlm.quantize.saving.load_quantized), or re-run tutorlm quantize"
        )


def load_packed(path, record: dict | None = None):
    """Rebuild a packed model in eval mode, on the CPU, in the record's float dtype.

    A float skeleton without weights, the packed modules of its layout, then the
    saved tensors assigned into them. The float dtype is the record's (fp32), not the
    caller's: the copy computes as the quantize stage measured it.

    Raises:
        QuantizedModelError: not a packed directory, no weights file (a record kept
            only to rebuild them), or tensors that do not fit the layout.
    """
    import torch
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from tutorlm.packed.layers import PackedInt4Linear, tied_output_layer

    path = Path(path)
    record = read_record(path) if record is None else record
    if record.get("backend", "packed") != "packed":
        raise QuantizedModelError(f"{path}: method {record['method']!r} is not a packed method")
    _require_weights(path, record)
    layout = record.get("layout") or {}
    float_dtype = getattr(torch, record.get("float_dtype", "float32"))
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):  # parameters on meta, rotary buffers real
        model = AutoModelForCausalLM.from_config(config, dtype=float_dtype)
    build_packed_skeleton(model, layout, float_dtype)
    weights = path / record["weights"]
    if not weights.is_file():
        raise QuantizedModelError(f"{weights}: missing (named by {path / RECORD_FILE})")
    with safe_open(weights, framework="pt") as handle:
        for key in list(handle.keys()):
            module_name, _, attribute = key.rpartition(".")
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                raise QuantizedModelError(
                    f"{weights}: tensor {key!r} names no module of the model"
                ) from None
            # A copy, not the file's view: safetensors data sits at 8-byte offsets, and
            # torch's int8 / int4 CPU kernels crash on weights not 64-byte aligned.
            tensor = handle.get_tensor(key).clone()
            if isinstance(module, PackedInt4Linear) and attribute == "nibbles":
                module.load_nibbles(tensor)
            elif attribute in module._parameters:
                module._parameters[attribute] = nn.Parameter(tensor, requires_grad=False)
            elif attribute in module._buffers:
                module._buffers[attribute] = tensor
            else:
                raise QuantizedModelError(
                    f"{weights}: tensor {key!r} is no parameter or buffer of {module_name}"
                )
    for name, kind in layout.items():
        if kind == "tied":
            embedding_name = next(n for n, k in layout.items() if k == "int8-embedding")
            model.set_submodule(name, tied_output_layer(model.get_submodule(embedding_name)))
    missing = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_meta
    ]
    if missing:
        raise QuantizedModelError(
            f"{weights}: no tensor for {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return model.eval()
