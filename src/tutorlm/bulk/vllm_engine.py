"""The vLLM backend of bulk generation (``pip install 'tutorlm[vllm]'``, CUDA GPUs).

:func:`tutorlm.bulk.open_generator` opens it when ``generation.backend`` is ``vllm``:
one ``LLM.generate`` call with continuous batching and paged attention, tensor
parallel across the visible GPUs, on the token ids of our own chat template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tutorlm.bulk import (
    VLLM_INSTALL,
    Generated,
    GenerationError,
    Prompt,
    Sampling,
    encode_prompt,
    prompt_budgets,
    use_chat_template,
)
from tutorlm.hardware import generation_dtype, resolve_device


def vllm_sampling(sampling: Sampling, max_tokens: int, index: int, eos_token_id) -> dict:
    """``vllm.SamplingParams`` arguments of one request: greedy at temperature 0, the
    same end token as transformers, request ``index`` seeded with ``seed + index``.

    ``top_k`` None is vLLM's "all tokens", spelt -1: the value every vLLM release
    accepts (recent ones also take 0, older ones refuse it).
    """
    params = {
        "n": 1,
        "max_tokens": max_tokens,
        "stop": list(sampling.stop) or None,
        "stop_token_ids": [eos_token_id] if eos_token_id is not None else None,
    }
    if sampling.greedy:
        return {**params, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": None}
    return {
        **params,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k is not None else -1,
        "seed": (sampling.seed or 0) + index,
    }


class VllmGenerator:
    """vLLM's offline ``LLM`` fed token ids rendered by our chat template.

    Args:
        llm: a ``vllm.LLM``.
        tokenizer: the HF tokenizer of the same model, with the chat template.
        progress: show vLLM's progress bar.
    """

    def __init__(self, llm, tokenizer, *, progress: bool = True):
        self.llm = llm
        self.tokenizer = tokenizer
        self.progress = progress
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        max_new_tokens: Sequence[int] | None = None,
        desc: str = "generate",
    ) -> list[Generated]:
        from vllm import SamplingParams

        budgets = prompt_budgets(prompts, sampling, max_new_tokens)
        eos = self.tokenizer.eos_token_id
        requests = [
            {"prompt_token_ids": encode_prompt(self.tokenizer, p, self.prefix_token_id, None, b)}
            for p, b in zip(prompts, budgets, strict=True)
        ]
        params = [
            SamplingParams(**vllm_sampling(sampling, budget, index, eos))
            for index, budget in enumerate(budgets)
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=self.progress)
        if len(outputs) != len(prompts):
            raise GenerationError(f"vLLM answered {len(outputs)} of {len(prompts)} prompts")
        results = []
        for output in outputs:  # vLLM returns them in input order
            best = output.outputs[0]
            reason = "length" if best.finish_reason == "length" else "stop"
            results.append(Generated(best.text, len(best.token_ids), reason))
        return results


def open_vllm(spec, device, config, chat_template, seed, progress, online) -> VllmGenerator:
    from tutorlm.models import model_kind

    kind = model_kind(spec)
    if kind != "float":  # tutorlm's packed layers and merges are not vLLM's loaders
        what = {
            "quantized": "a quantize-stage copy (its packed int8 / int4 layers run on the CPU)",
            "adapter": "a bare LoRA adapter (use the run's merged/ model)",
            "gguf": "a GGUF file",
        }[kind]
        raise GenerationError(
            f"generation.backend: vllm loads float safetensors checkpoints; {spec} is {what}. "
            "Use generation.backend: transformers (on the CPU for a packed copy)"
        )
    try:
        import vllm
    except ImportError as error:
        raise GenerationError(
            f"generation.backend: vllm needs vLLM, which is not installed: {VLLM_INSTALL} "
            "(or use generation.backend: transformers)"
        ) from error
    import torch

    if not torch.cuda.is_available():
        raise GenerationError(
            "generation.backend: vllm needs a CUDA GPU and torch sees none here; "
            "use generation.backend: transformers"
        )
    resolved = resolve_device(device)
    if not re.fullmatch(r"cuda(:0)?", resolved):
        raise GenerationError(
            f"generation.backend: vllm runs on the visible GPUs from the first, not on "
            f"{resolved!r}: choose them with CUDA_VISIBLE_DEVICES and set device: cuda"
        )
    from tutorlm.models import load_tokenizer, require_safetensors, resolve_model

    path = resolve_model(spec, online=online)
    require_safetensors(path)  # and load_format below: vLLM never unpickles weights
    tokenizer = load_tokenizer(path)
    use_chat_template(tokenizer, chat_template)
    dtype = generation_dtype(resolved) if config.dtype == "auto" else config.dtype
    options = {"max_model_len": config.max_model_len} if config.max_model_len else {}
    llm = vllm.LLM(
        model=str(path),
        tokenizer=str(path),
        tensor_parallel_size=config.tensor_parallel_size,
        dtype=str(dtype).removeprefix("torch."),
        seed=seed,
        gpu_memory_utilization=config.gpu_memory_utilization,
        trust_remote_code=False,
        load_format="safetensors",
        **options,
    )
    return VllmGenerator(llm, tokenizer, progress=progress)
