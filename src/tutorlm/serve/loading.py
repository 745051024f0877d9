"""Loading a model to serve: safetensors only, remote code only when asked, and the
quantize stage's copies as the quantized models they are."""

from __future__ import annotations

from pathlib import Path

from tutorlm.serve.engine import EngineError


def load_serving_model(
    spec: str, *, device: str = "auto", trust_remote_code: bool = False, online: bool | None = None
):
    """``(model, tokenizer)`` for serving: safetensors only, remote code only if asked.

    A directory the quantize stage wrote (``quantize/models/int8-packed``, with its
    ``quantization.json``) is loaded as the quantized model it is, so the tutor served
    is the one the quantize table measured. Otherwise
    ``tutorlm.models.resolve_model`` finds the directory; the weights are loaded
    with ``use_safetensors=True`` so that no pickle file is ever unpickled, and a
    directory without safetensors weights is refused with a message.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tutorlm.hardware import generation_dtype, resolve_device
    from tutorlm.models import apply_offline_env, resolve_model

    device = resolve_device(device)  # a CUDA request without a GPU fails before loading
    apply_offline_env(online)
    path = Path(resolve_model(spec, online=online))
    if (path / "quantization.json").is_file():  # the quantize stage's int8 / int4 copy
        from tutorlm.quantize.saving import load_quantized

        model, tokenizer = load_quantized(path, online=online, device=device)
        return model.eval(), tokenizer
    if not any(path.glob("*.safetensors")):
        raise EngineError(
            f"{path} has no .safetensors weights; tutorlm serves safetensors only "
            "(pickle files can run code when loaded). Convert the checkpoint first."
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=generation_dtype(device),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    model.to(device).eval()
    return model, tokenizer
