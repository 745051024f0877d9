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

Reading them back lives below the stages (:mod:`tutorlm.packed.directory`), so that
``tutorlm.models.load_model`` loads these copies for every stage (eval, samples,
serve); :func:`load_quantized` goes through the same loader.

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
from tutorlm.packed import directory
from tutorlm.packed.directory import FORMAT, PACKED_FILE, RECORD_FILE, QuantizedModelError
from tutorlm.quantize.methods import (
    QuantizeError,
    check_available,
    load_time_config,
    pack_model,
)


@contextlib.contextmanager
def _as_quantize_error() -> Iterator[None]:
    """Report the reader's errors (``tutorlm.packed.directory``) as this stage's own."""
    try:
        yield
    except QuantizedModelError as error:
        raise QuantizeError(str(error)) from None


def read_record(path) -> dict:
    """The ``quantization.json`` of a quantized directory, checked
    (:func:`tutorlm.packed.directory.read_record`, with this stage's error)."""
    with _as_quantize_error():
        return directory.read_record(path)


@contextlib.contextmanager
def float_source(spec, *, online: bool | None = None) -> Iterator[tuple[Path, dict]]:
    """A float HF directory for ``spec``, merging a LoRA adapter into its base first.

    Yields ``(directory, description)``; a merged copy lives in a temporary
    directory for the duration of the ``with`` block.

    Raises:
        QuantizeError: ``spec`` is already a quantized copy (quantize its source).
    """
    from tutorlm.models import adapter_base, model_kind, resolve_model

    path = Path(str(spec)).expanduser()
    kind = model_kind(spec)
    if kind == "quantized":
        source = read_record(path)["source"]
        raise QuantizeError(
            f"{path} is already a quantized copy; quantize its float source instead: "
            f"{source.get('adapter') or source.get('path') or source.get('spec')}"
        )
    if kind == "adapter":
        base = adapter_base(path, online=online)
        with tempfile.TemporaryDirectory(prefix="tutorlm-merged-") as tmp:
            _merge_adapter(path, Path(tmp), online=online)
            yield Path(tmp), {"spec": str(spec), "adapter": str(path.resolve()), "base": str(base)}
        return
    resolved = resolve_model(spec, online=online)
    yield resolved, {"spec": str(spec), "path": str(Path(resolved).resolve())}


def _merge_adapter(adapter: Path, out_dir: Path, *, online: bool | None = None) -> None:
    """Save ``adapter`` merged into an fp32 copy of its base (``tutorlm.models``' merge,
    the one every stage loads an adapter with), with the adapter's tokenizer."""
    import torch

    model = load_causal_lm(adapter, dtype=torch.float32, online=online)
    model.save_pretrained(out_dir)
    load_tokenizer(adapter, online=online).save_pretrained(out_dir)


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
    from tutorlm.packed.layers import PackedInt4Linear

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
    the model runs; None: the CPU, or the GPU for bitsandbytes. Saved weights load
    through :func:`tutorlm.packed.directory.load_quantized_dir`, the loader every
    stage reaches through ``tutorlm.models.load_model``; only a record kept without
    its weights is rebuilt here, by re-running its recipe on its source.

    Raises:
        QuantizeError: for a directory that is not one, a method this machine
            cannot run, or a packed file whose tensors do not fit the layout.
    """
    path = Path(path)
    record = read_record(path)
    check_available(record["method"], device)
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
    with _as_quantize_error():
        return directory.load_quantized_dir(path, device), tokenizer
