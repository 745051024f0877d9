"""Which engine generates the replies of ``tutorlm serve`` and ``tutorlm chat``.

Every engine offers the same interface (``name``, ``tokenizer``, ``context_window``,
``load``, ``count_prompt_tokens``, ``submit``, ``close``), so the tutor, the API and
the page never know which one runs:

- ``transformers``: :class:`~tutorlm.serve.engine.LocalEngine`, one ``generate`` per
  batch of requests; loads anything ``load_serving_model`` loads.
- ``stepped``: ``tutorlm.serve.stepped.SteppedEngine``, requests join and leave the
  batch at every decoding step; for the models it supports.
- ``llama.cpp``: a GGUF file (``tutorlm quantize --gguf``) through llama-cpp-python.
- ``vllm``: vLLM's async engine in this process, on a CUDA GPU.
- remote: ``--backend URL``, generation on another OpenAI-compatible server.

``auto`` picks by what it is given: a ``.gguf`` file -> llama.cpp; ``--backend`` ->
remote; a CUDA device with vLLM installed -> vllm; else ``stepped`` when it supports
the model, else ``transformers``. ``--engine transformers`` or ``stepped`` on a GGUF file
serve it dequantized to float (``tutorlm.models.load_model``), not as llama.cpp computes
it. An explicit choice that cannot work fails before anything is loaded (a model takes
minutes to load; the mistake takes none).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tutorlm.errors import TutorlmError

if TYPE_CHECKING:
    import argparse

    from tutorlm.serve.commands import Settings

ENGINES = ("auto", "transformers", "stepped", "llama.cpp", "vllm")
"""The values of ``--engine``."""


@dataclass(frozen=True)
class EnginePlan:
    """The engine to open and why, decided from the flags alone (nothing loaded yet).

    ``engine`` is ``remote``, ``llama.cpp``, ``vllm``, ``stepped``, ``transformers``,
    or ``local``: ``stepped`` if it supports the model, else ``transformers``, which
    only the loaded model can tell.
    """

    engine: str
    reason: str


def is_gguf(spec: str) -> bool:
    """A model spec that names a GGUF file (served by llama.cpp only)."""
    return str(spec).lower().endswith(".gguf")


def _importable(module: str) -> bool:
    """Whether ``import module`` would find it, without importing it (vLLM takes seconds)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def vllm_unavailable(spec: str, device: str) -> str | None:
    """Why vLLM cannot serve ``spec`` on ``device`` here, or None when it can.

    vLLM runs on the visible GPUs from the first (``cuda`` or ``cuda:0``) and loads
    safetensors checkpoints; the quantize stage's int8/int4 copies are tutorlm's own
    format, which it cannot read.
    """
    from tutorlm.hardware import resolve_device

    if not _importable("vllm"):
        return "vLLM is not installed (pip install 'tutorlm[vllm]')"
    resolved = resolve_device(device)
    if not re.fullmatch(r"cuda(:0)?", resolved):
        return f"vLLM needs a CUDA GPU and the device is {resolved}"
    if (Path(spec) / "quantization.json").is_file():
        return "vLLM cannot load tutorlm's quantized copies (quantization.json)"
    return None


def plan_engine(requested: str, spec: str, *, backend: str | None, device: str) -> EnginePlan:
    """The engine ``--engine requested`` gives for model ``spec``, or a clear error.

    Raises:
        TutorlmError: a choice that cannot work with this model, flag or machine.
    """
    if requested not in ENGINES:
        raise TutorlmError(f"--engine {requested!r} is not one of {', '.join(ENGINES)}")
    if backend:
        if requested != "auto":
            raise TutorlmError(
                f"--backend sends generation to {backend}; --engine {requested} runs it here: "
                "give one of the two"
            )
        return EnginePlan("remote", f"--backend {backend}")
    gguf = is_gguf(spec)
    if gguf and requested in ("auto", "llama.cpp"):
        return EnginePlan("llama.cpp", "the model is a GGUF file")
    if gguf and requested == "vllm":
        raise TutorlmError(
            f"--engine vllm cannot serve the GGUF file {spec}: it loads safetensors "
            "checkpoints; use --engine llama.cpp (or auto), or transformers to serve it "
            "dequantized to float"
        )
    if requested == "llama.cpp":
        raise TutorlmError(
            f"--engine llama.cpp serves GGUF files, and {spec} is not one: write one with "
            f"tutorlm quantize --model {spec} --gguf q8_0"
        )
    if requested == "vllm":
        if (why := vllm_unavailable(spec, device)) is not None:
            raise TutorlmError(f"--engine vllm cannot run: {why}")
        return EnginePlan("vllm", "--engine vllm")
    if requested in ("stepped", "transformers"):
        if requested == "stepped" and _stepped() is None:
            raise TutorlmError("--engine stepped: this install has no stepped engine")
        dequantized = " (the GGUF dequantized to float by transformers)" if gguf else ""
        return EnginePlan(requested, f"--engine {requested}{dequantized}")
    if (why := vllm_unavailable(spec, device)) is None:
        return EnginePlan("vllm", "a CUDA GPU and vLLM installed")
    return EnginePlan("local", f"not vllm: {why}")


def _stepped():
    """``(SteppedEngine, unsupported_reason)``, or None where the module is missing."""
    try:
        from tutorlm.serve.stepped import SteppedEngine, unsupported_reason
    except ImportError:
        return None
    return SteppedEngine, unsupported_reason


def open_engine(args: argparse.Namespace, settings: Settings):
    """The engine ``--engine`` (default ``auto``) picks, opened; and the final plan.

    Returns:
        ``(engine, EnginePlan)``: the plan names the engine that was opened and why.

    Raises:
        TutorlmError: an explicit choice that cannot work (before anything loads).
    """
    from tutorlm.templates import apply_template

    config, name = settings.config, settings.name
    plan = plan_engine(
        getattr(args, "engine", None) or "auto",
        settings.model,
        backend=args.backend,
        device=settings.device,
    )
    if plan.engine == "remote":
        from tutorlm.models import load_tokenizer
        from tutorlm.serve.backend import RemoteEngine

        tokenizer = apply_template(
            load_tokenizer(settings.model, online=args.online), settings.chat_template
        )
        engine = RemoteEngine(
            args.backend,
            tokenizer,
            model=args.backend_model,
            name=name,
            api_key=args.backend_api_key,
            max_queue=config.max_queue,
        )
        return engine, plan
    if plan.engine == "llama.cpp":
        from tutorlm.serve.llamacpp_engine import open_llamacpp_engine

        engine = open_llamacpp_engine(
            settings.model,
            name=name,
            chat_template=settings.chat_template,
            device=settings.device,
            max_queue=config.max_queue,
        )
        return engine, plan
    if plan.engine == "vllm":
        from tutorlm.serve.vllm_serving import open_vllm_engine

        engine = open_vllm_engine(
            settings.model,
            name=name,
            chat_template=settings.chat_template,
            device=settings.device,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            trust_remote_code=args.trust_remote_code,
            online=args.online,
        )
        return engine, plan
    return _open_local(plan, args, settings)


def _open_local(plan: EnginePlan, args: argparse.Namespace, settings: Settings):
    """Load the model, then serve it with ``stepped`` (when it supports it) or ``transformers``."""
    from tutorlm.serve.engine import LocalEngine
    from tutorlm.serve.loading import load_serving_model
    from tutorlm.templates import apply_template

    config = settings.config
    model, tokenizer = load_serving_model(
        settings.model,
        device=settings.device,
        trust_remote_code=args.trust_remote_code,
        online=args.online,
    )
    apply_template(tokenizer, settings.chat_template)
    if plan.engine in ("local", "stepped"):
        stepped = _stepped()
        why = "this install has no stepped engine" if stepped is None else stepped[1](model)
        if why is None:
            engine = stepped[0](
                model,
                tokenizer,
                name=settings.name,
                max_batch=config.max_batch,
                max_queue=config.max_queue,
            )
            reason = plan.reason if plan.engine == "stepped" else f"{plan.reason}; stepped fits"
            return engine, EnginePlan("stepped", reason)
        if plan.engine == "stepped":
            raise TutorlmError(f"--engine stepped cannot serve {settings.model}: {why}")
        plan = EnginePlan("transformers", f"{plan.reason}; not stepped: {why}")
    engine = LocalEngine(
        model,
        tokenizer,
        name=settings.name,
        max_batch=config.max_batch,
        batch_wait_s=config.batch_wait_ms / 1000,
        max_queue=config.max_queue,
    )
    return engine, plan
