"""Loading a model to serve: safetensors only, remote code only when asked, and the
quantize stage's copies as the quantized models they are.

Every model goes through :func:`tutorlm.models.load_model`, the loader the evaluation
and the samples use, so that the tutor served computes what was evaluated. Two
serving rules sit on top: a float folder without safetensors is refused with the
serving message, and ``--trust-remote-code`` (serving only) lets a float folder run
its own code.
"""

from __future__ import annotations

from pathlib import Path

from tutorlm.serve.engine import EngineError


def load_serving_model(
    spec: str, *, device: str = "auto", trust_remote_code: bool = False, online: bool | None = None
):
    """``(model, tokenizer)`` for serving: safetensors only, remote code only if asked.

    A directory the quantize stage wrote (``quantize/models/int8-packed``, with its
    ``quantization.json``) is loaded as the quantized model it is, so the tutor served
    is the one the quantize table measured: through ``load_quantized``, which checks
    the method runs on ``device`` (with the quantize stage's messages), rebuilds a copy
    saved without weights, and loads saved weights with the shared loader. A bare
    LoRA adapter is merged into its base; a ``.gguf`` file is dequantized to float
    (computed by PyTorch, not llama.cpp). Otherwise ``tutorlm.models.resolve_model``
    finds the directory; the weights are loaded with ``use_safetensors=True`` so that
    no pickle file is ever unpickled, and a directory without safetensors weights is
    refused with a message.
    """
    from tutorlm.hardware import generation_dtype, resolve_device
    from tutorlm.models import apply_offline_env, load_model, model_kind, resolve_model

    device = resolve_device(device)  # a CUDA request without a GPU fails before loading
    apply_offline_env(online)
    kind = model_kind(spec)
    if kind == "quantized":  # the quantize stage's int8 / int4 copy
        from tutorlm.quantize.saving import load_quantized

        model, tokenizer = load_quantized(spec, online=online, device=device)
        return model.eval(), tokenizer
    dtype = generation_dtype(device)
    if kind != "float":  # a LoRA adapter or a GGUF file
        return load_model(spec, dtype=dtype, device=device, online=online)
    path = Path(resolve_model(spec, online=online))
    if not any(path.glob("*.safetensors")):
        raise EngineError(
            f"{path} has no .safetensors weights; tutorlm serves safetensors only "
            "(pickle files can run code when loaded). Convert the checkpoint first."
        )
    if not trust_remote_code:
        return load_model(path, dtype=dtype, device=device, online=online)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=True
    )
    model.to(device).eval()
    return model, tokenizer
