"""What a quantized model costs: weight bytes, memory, load time and generation speed.

Definitions used in every table:

- **weight bytes**: the bytes of every parameter and persistent buffer the model
  holds, each storage counted once (tied matrices once), tensor subclasses
  (torchao, bitsandbytes) counted by the plain tensors inside them. Rotary
  tables and other non-persistent buffers are not weights and are left out.
- **peak RSS**: the process's maximum resident set size (``ru_maxrss``) after
  loading the model and generating, read before any evaluation runs; each
  model is measured in its own fresh process so that one model's pages never
  count for another. On a GPU, peak allocated GPU memory instead.
- **generation**: greedy decoding of ``new_tokens`` tokens after one chat
  prompt, at batch size 1, exactly ``new_tokens`` each run (EOS suppressed);
  *time to first token* = the time of a one-token generation (prefill + first
  step); *tokens/s* = new tokens / wall time; median of ``repeats`` runs after
  one warm-up. *Tokens per CPU-second* divides by the process's CPU time
  instead: on a shared machine whose load changes by the minute it is the
  steadier figure (at one thread it is the speed on an idle core; with more
  threads it also counts time spent waiting at thread barriers).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PROMPT = "Explain why the sky is blue to a first-year physics student, in a few sentences."


def _tensor_parts(tensor) -> list:
    """The plain tensors that hold a (possibly subclassed) tensor's data."""
    import torch

    if type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return [tensor]
    parts = []
    if hasattr(tensor, "__tensor_flatten__"):  # torchao tensor subclasses
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            inner = getattr(tensor, name)
            if isinstance(inner, torch.Tensor):
                parts.extend(_tensor_parts(inner))
        return parts
    parts.append(tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor)
    state = getattr(tensor, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None:
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                parts.append(value)
    scale = getattr(tensor, "SCB", None)  # bitsandbytes Int8Params
    if isinstance(scale, torch.Tensor):
        parts.append(scale)
    return parts


def weight_bytes(model) -> int:
    """Bytes of the model's weights (see the module docstring), each storage once."""
    tensors = [tensor for _, tensor in model.named_parameters(remove_duplicate=False)]
    for module in model.modules():
        persistent = set(module._buffers) - set(getattr(module, "_non_persistent_buffers_set", ()))
        tensors.extend(
            module._buffers[name] for name in persistent if module._buffers[name] is not None
        )
    seen, total = set(), 0
    for tensor in tensors:
        for part in _tensor_parts(tensor):
            if part.is_meta:
                continue
            key = (part.untyped_storage().data_ptr(), part.storage_offset(), tuple(part.shape))
            if key in seen:
                continue
            seen.add(key)
            total += part.numel() * part.element_size()
    return total


def peak_rss_bytes(status: str = "/proc/self/status") -> int:
    """This process's peak resident set size so far, in bytes.

    Linux: ``VmHWM`` of ``/proc/self/status``, which starts afresh with the process.
    ``getrusage``'s ``ru_maxrss`` does not: a process started by ``fork`` + ``exec``
    inherits the peak of the parent at fork time, so every isolated row of a
    comparison started from a large pipeline process would report the parent's peak.
    """
    try:
        for line in Path(status).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class GenerationSpeed:
    """Greedy generation speed at batch size 1 (see the module docstring)."""

    tokens_per_second: float
    tokens_per_cpu_second: float
    ttft_seconds: float
    new_tokens: int
    prompt_tokens: int
    runs: list[float]
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def measure_generation(
    model, tokenizer, *, prompt: str = DEFAULT_PROMPT, new_tokens: int = 64, repeats: int = 3
) -> GenerationSpeed:
    """Time greedy generation through the model's chat template."""
    import torch

    from tutorlm.generation import chat_input_ids

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    input_ids = chat_input_ids(tokenizer, [{"role": "user", "content": prompt}]).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    cpu_seconds: list[float] = []

    def generate(count: int) -> tuple[float, torch.Tensor]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=count,
                min_new_tokens=count,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        cpu_seconds.append(time.process_time() - cpu_started)
        return time.perf_counter() - started, output[0, input_ids.shape[1] :]

    generate(min(new_tokens, 8))  # warm-up: first-call allocations and kernel choices
    ttft = statistics.median(generate(1)[0] for _ in range(max(repeats, 1)))
    runs, cpu_runs, tokens = [], [], None
    for _ in range(max(repeats, 1)):
        seconds, tokens = generate(new_tokens)
        runs.append(new_tokens / seconds)
        cpu_runs.append(new_tokens / max(cpu_seconds[-1], 1e-9))
    return GenerationSpeed(
        tokens_per_second=statistics.median(runs),
        tokens_per_cpu_second=statistics.median(cpu_runs),
        ttft_seconds=ttft,
        new_tokens=new_tokens,
        prompt_tokens=int(input_ids.shape[1]),
        runs=[round(r, 2) for r in runs],
        text=tokenizer.decode(tokens, skip_special_tokens=True),
    )
