"""Quantize a model into a directory, and load it back.

A quantized directory holds the tokenizer (with its chat template), ``config.json``,
``generation_config.json``, the weights, and ``quantization.json``: the method,
the exact source model, the library versions and the command that rebuilds it.

- ``*-packed`` methods write ``packed.safetensors`` (int8 matrices, int4 values two
  per byte, bf16 scales: plain tensors) and are rebuilt module by module on load.
  The file is deliberately not called ``model.safetensors``: plain
  ``from_pretrained`` would otherwise load it into float layers with every weight
  missing and silently random.
- torchao methods go through transformers' ``TorchAoConfig``: quantized while
  loading, saved with ``save_pretrained(safe_serialization=True)`` (torchao
  flattens its tensor subclasses into plain tensors plus JSON metadata, and
  rebuilds only allow-listed classes), reloaded by ``from_pretrained``.
- bitsandbytes methods likewise (GPU only).

Nothing is ever unpickled: every load reads safetensors only. Where weights are
not saved (``save_weights=False``, or a backend that cannot serialize), the
record keeps ``weights: null`` and :func:`load_quantized` re-runs the recorded
recipe on the recorded source.

Adapters: a LoRA adapter directory is merged into a fresh fp32 copy of its base
before quantizing, never into quantized weights (merging into 4-bit weights is
a known source of quality loss: peft#2105, #2321).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tutorlm.data.formats import follow_umask
from tutorlm.models import load_causal_lm, load_tokenizer
from tutorlm.quantize.methods import (
    QuantizeError,
    build_packed_skeleton,
    check_available,
    load_time_config,
    pack_model,
)

RECORD_FILE = "quantization.json"
PACKED_FILE = "packed.safetensors"
FORMAT = "tutorlm.quantized/1"


def read_record(path) -> dict:
    """The ``quantization.json`` of a quantized directory, checked."""
    record_path = Path(path) / RECORD_FILE
    if not record_path.is_file():
        raise QuantizeError(f"{path}: not a quantized model directory (no {RECORD_FILE})")
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as error:
        raise QuantizeError(f"{record_path}: not valid JSON: {error}") from None
    if record.get("format") != FORMAT:
        raise QuantizeError(
            f"{record_path}: field 'format' is {record.get('format')!r}, expected {FORMAT!r}"
        )
    for field in ("method", "source"):
        if field not in record:
            raise QuantizeError(f"{record_path}: missing field {field!r}")
    return record


@contextlib.contextmanager
def float_source(spec, *, online: bool | None = None) -> Iterator[tuple[Path, dict]]:
    """A float HF directory for ``spec``, merging a LoRA adapter into its base first.

    Yields ``(directory, description)``; a merged copy lives in a temporary
    directory for the duration of the ``with`` block.
    """
    from tutorlm.models import resolve_model

    path = Path(str(spec)).expanduser()
    adapter_config = path / "adapter_config.json"
    if path.is_dir() and adapter_config.is_file() and not (path / "config.json").is_file():
        base_spec = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base_spec:
            raise QuantizeError(f"{adapter_config}: field 'base_model_name_or_path' is empty")
        base = resolve_model(base_spec, online=online)
        with tempfile.TemporaryDirectory(prefix="tutorlm-merged-") as tmp:
            _merge_adapter(base, path, Path(tmp))
            yield Path(tmp), {"spec": str(spec), "adapter": str(path.resolve()), "base": str(base)}
        return
    resolved = resolve_model(spec, online=online)
    yield resolved, {"spec": str(spec), "path": str(Path(resolved).resolve())}


def _merge_adapter(base: Path, adapter: Path, out_dir: Path) -> None:
    """Merge ``adapter`` into an fp32 copy of ``base`` and save it (with the adapter's tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    model = load_causal_lm(base, dtype=torch.float32)
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _versions() -> dict:
    import importlib.metadata

    versions = {}
    for package in ("tutorlm", "torch", "transformers", "torchao", "bitsandbytes", "safetensors"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def quantize_in_memory(
    source: Path, method: str, *, embeddings: bool = True, device: str | None = None
):
    """Load the float model at ``source`` and quantize it with ``method``.

    ``device`` (a resolved device) is where the model runs; None: the CPU, or the
    GPU for bitsandbytes.

    Returns:
        ``(model, layout)``; ``layout`` is the packed layout (None for other backends).
    """
    import torch

    info = check_available(method, device)
    if info.backend == "packed":
        model = load_causal_lm(source, dtype=torch.float32)
        layout = pack_model(model, info.bits, embeddings=embeddings)
        return model.eval(), layout
    kwargs = _placement(info, device)
    dtype = torch.bfloat16 if info.backend == "bitsandbytes" else torch.float32
    model = load_causal_lm(
        source, dtype=dtype, quantization_config=load_time_config(method), **kwargs
    )
    return model.eval(), None


def quantize_to_dir(spec, method: str, out_dir, **options) -> dict:
    """:func:`quantize_and_save` without the model: returns the record only."""
    return quantize_and_save(spec, method, out_dir, **options)[0]


def quantize_and_save(
    spec,
    method: str,
    out_dir,
    *,
    embeddings: bool = True,
    save_weights: bool = True,
    online: bool | None = None,
):
    """Quantize ``spec`` (a model or a LoRA adapter) with ``method`` into ``out_dir``.

    Args:
        spec: model spec, local model directory, or adapter directory.
        method: a name from :data:`tutorlm.quantize.methods.METHODS`.
        out_dir: written atomically (a temporary sibling renamed into place).
        embeddings: packed methods: also quantize the embedding / output layer.
        save_weights: False records only how to rebuild the model.

    Returns:
        ``(record, model)``: the record also written as ``quantization.json``, and the
        quantized model it saved.
    """

    from tutorlm.quantize.measure import weight_bytes

    info = check_available(method)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with float_source(spec, online=online) as (source, source_info):
            model, layout = quantize_in_memory(source, method, embeddings=embeddings)
            tokenizer = load_tokenizer(source)
            source_info["weight_bytes"] = _float_weight_bytes(source)
        record = {
            "format": FORMAT,
            "method": method,
            "backend": info.backend,
            "bits": info.bits,
            "source": source_info,
            "float_dtype": "float32",
            "embeddings_quantized": bool(embeddings) if info.backend == "packed" else False,
            "layout": layout,
            "weight_bytes": weight_bytes(model),
            "weights": None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
            "rebuild": f"tutorlm quantize --model {source_info['spec']} --method {method} --out {out_dir}",
        }
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        if save_weights:
            record["weights"] = _save_weights(model, info.backend, tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        follow_umask(tmp)  # mkdtemp and safetensors make theirs private; a model is not
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record, model


def _float_weight_bytes(source: Path) -> int:
    """Bytes of the source's weights if held in fp32 (the comparison's reference)."""
    from safetensors import safe_open

    total = 0
    for shard in sorted(Path(source).glob("*.safetensors")):
        with safe_open(shard, framework="numpy") as handle:
            for name in list(handle.keys()):
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                total += 4 * count
    return total


def _save_weights(model, backend: str, out_dir: Path) -> str:
    if backend == "packed":
        from safetensors.torch import save_file

        save_file(packed_state_dict(model), out_dir / PACKED_FILE, metadata={"format": "pt"})
        return PACKED_FILE
    model.save_pretrained(out_dir, safe_serialization=True)
    return "model.safetensors"


def packed_state_dict(model) -> dict:
    """A packed model's tensors as saved: tied copies once, int4 as portable nibbles."""
    from tutorlm.quantize.packed import PackedInt4Linear

    state, seen = {}, set()
    int4 = {name for name, module in model.named_modules() if isinstance(module, PackedInt4Linear)}
    for name, tensor in model.state_dict().items():
        module_name, _, attribute = name.rpartition(".")
        if module_name in int4 and attribute == "packed":
            state[f"{module_name}.nibbles"] = model.get_submodule(module_name).nibbles()
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:  # the tied output layer: same storage as the embedding
            continue
        seen.add(key)
        state[name] = tensor.detach().contiguous()
    return state


def _placement(info, device: str | None) -> dict:
    """``from_pretrained`` arguments that put a load-time-quantized model on ``device``:
    bitsandbytes layers only exist on a GPU; torchao's quantize where they will run."""
    if info.backend == "bitsandbytes":
        return {"device_map": device or "cuda"}
    if device is not None and str(device).startswith("cuda"):
        return {"device_map": device}
    return {}


def load_quantized(path, *, online: bool | None = None, device: str | None = None):
    """Load a directory written by :func:`quantize_to_dir` as ``(model, tokenizer)``, in eval mode.

    ``device`` (a resolved device, see ``tutorlm.hardware.resolve_device``) is where
    the model runs; None: the CPU, or the GPU for bitsandbytes.

    Raises:
        QuantizeError: for a directory that is not one, a method this machine
            cannot run, or a packed file whose tensors do not fit the layout.
    """
    import torch

    path = Path(path)
    record = read_record(path)
    info = check_available(record["method"], device)
    tokenizer = load_tokenizer(path)
    if record.get("weights") is None:
        source = record["source"]
        spec = source.get("adapter") or source.get("path") or source["spec"]
        with float_source(spec, online=online) as (float_dir, _):
            model, _ = quantize_in_memory(
                float_dir,
                record["method"],
                embeddings=record.get("embeddings_quantized", True),
                device=device,
            )
        return model, tokenizer
    if info.backend == "packed":
        return _load_packed(path, record), tokenizer
    kwargs = _placement(info, device)
    dtype = torch.bfloat16 if info.backend == "bitsandbytes" else torch.float32
    return load_causal_lm(path, dtype=dtype, **kwargs), tokenizer


def _load_packed(path: Path, record: dict):
    """Rebuild a packed model: float skeleton without weights, packed modules, saved tensors."""
    import torch
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from tutorlm.quantize.packed import PackedInt4Linear, tied_output_layer

    layout = record.get("layout") or {}
    float_dtype = getattr(torch, record.get("float_dtype", "float32"))
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):  # parameters on meta, rotary buffers real
        model = AutoModelForCausalLM.from_config(config, dtype=float_dtype)
    build_packed_skeleton(model, layout, float_dtype)
    weights = path / record["weights"]
    with safe_open(weights, framework="pt") as handle:
        for key in list(handle.keys()):
            module_name, _, attribute = key.rpartition(".")
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                raise QuantizeError(
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
                raise QuantizeError(
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
        raise QuantizeError(
            f"{weights}: no tensor for {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return model.eval()
