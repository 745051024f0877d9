"""Bulk generation: many prompts at once, on an engine made for it.

Corruption writes thousands of rejected answers, the generation metrics answer every
held-out question, the run's samples answer a few: all three go through
:func:`open_generator`, whose generators have one method, ``generate(prompts,
sampling)``, and two backends:

- ``transformers`` (default, CPU or GPU): batched ``model.generate`` on left-padded
  rows, longest prompts first (a batch that runs out of memory shows it on the first
  pass), the batch halved on out-of-memory for the rest of the run;
- ``vllm`` (``pip install 'tutorlm[vllm]'``, CUDA GPUs, tensor parallel across them):
  one ``LLM.generate`` call with continuous batching and paged attention.

Both take the same prompts: a conversation is rendered by our chat template into
token ids (:func:`tutorlm.templates.chat_prompt_ids`, as :mod:`tutorlm.generation`
does for one chat) and vLLM is handed those ids, so both backends read exactly the
same prompt; a plain string is tokenized as it is, without special tokens. Both stop
at the tokenizer's end token, at a stop string (cut off) or at the budget, and say
which (``finish_reason`` ``stop`` or ``length``). Results come back in input order.

Reproducibility: greedy decoding (temperature 0) gives the same text whatever the
batch size or backend order (left padding with position ids from the mask; tested
against one-chat :func:`tutorlm.generation.chat`). Sampling is seeded: vLLM seeds each
request (``seed + its index``), so a request's text does not depend on its batch;
transformers draws a batch's tokens from one generator seeded by ``seed + the index of
the batch's first prompt``, so the same prompts, sampling and batch size give the same
texts, while another batch size (or a batch halved on out-of-memory) draws others.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tutorlm.errors import TutorlmError
from tutorlm.hardware import (
    DTYPES,
    device_dtype,
    generation_dtype,
    halving_batches,
    resolve_device,
)

Prompt = list[dict] | str
"""A conversation (``[{"role", "content"}, ...]``, answered through the chat template)
or a plain text to continue."""

VLLM_INSTALL = "pip install 'tutorlm[vllm]'"


class GenerationError(TutorlmError):
    """A generation setting or backend this machine cannot honour, with the fix."""


class Sampling(BaseModel):
    """How one bulk call decodes: budget, temperature, top-k / top-p, seed, stops."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens generated per prompt."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0: greedy decoding (top-k, top-p and seed unused); above 0, sampling."""
    top_k: int | None = Field(default=None, ge=1)
    """Sample among the k most likely tokens; None: all of them."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Sample within this probability mass (1.0: all)."""
    seed: int | None = None
    """Seed of the sampling; None: the recipe's ``seed``."""
    stop: tuple[str, ...] = ()
    """Texts that end an answer; the answer is cut before the first one."""

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        if any(not text for text in stop):
            raise ValueError("a stop string cannot be empty")
        return stop

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class GenerationConfig(BaseModel):
    """The recipe's ``generation`` block: which engine generates in bulk, and how fast.

    Every key but ``samples`` changes only how fast texts come (like ``eval.batch_size``),
    so changing it re-runs no stage; ``samples`` is what the ``samples`` stage reads.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    backend: Literal["transformers", "vllm"] = "transformers"
    """``transformers``: batched ``generate`` on the recipe's ``device`` (CPU or GPU).
    ``vllm``: vLLM on the visible CUDA GPUs (``pip install 'tutorlm[vllm]'``)."""
    batch_size: int = Field(default=16, ge=1)
    """transformers: prompts per ``generate`` call, halved on out-of-memory."""
    dtype: str = "auto"
    """Weights' dtype: ``auto`` (fp32 on a CPU, bf16 or fp16 on a GPU), ``float32``,
    ``bfloat16``, ``float16``."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """vllm: GPUs one model is split across."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    """vllm: share of each GPU's memory for weights and KV cache."""
    max_model_len: int | None = Field(default=None, ge=16)
    """vllm: longest prompt plus answer; the model's context if unset."""
    samples: Sampling = Field(default_factory=lambda: Sampling(max_new_tokens=160))
    """How the run's sample answers are decoded (``samples.json``): greedy, 160 tokens,
    unless a recipe states its report's sampling (ProbLLMs: ``top_k: 50, top_p: 1.0``)."""

    @field_validator("dtype")
    @classmethod
    def _dtype_name(cls, dtype: str) -> str:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        return dtype


@dataclass(frozen=True)
class Generated:
    """One prompt's answer."""

    text: str
    """The answer, special tokens removed, cut before a stop string."""
    tokens: int
    """Tokens the model generated for it (the end token included)."""
    finish_reason: Literal["stop", "length"]
    """``stop``: it ended (end token or stop string); ``length``: the budget ran out."""


class Generator(Protocol):
    """What every backend offers."""

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        max_new_tokens: Sequence[int] | None = None,
        desc: str = "generate",
    ) -> list[Generated]:
        """Answers to ``prompts`` in their order; ``max_new_tokens`` gives each prompt
        its own budget (else ``sampling.max_new_tokens``)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this generator's tokenizer (no special tokens)."""
        ...


def prompt_budgets(prompts: Sequence, sampling: Sampling, max_new_tokens) -> list[int]:
    if max_new_tokens is None:
        return [sampling.max_new_tokens] * len(prompts)
    budgets = [int(n) for n in max_new_tokens]
    if len(budgets) != len(prompts) or any(n < 1 for n in budgets):
        raise GenerationError(
            f"max_new_tokens: give one budget >= 1 per prompt ({len(prompts)} prompts, "
            f"{len(budgets)} budgets)"
        )
    return budgets


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of the ``stop`` strings, and whether one was found."""
    hits = [text.find(s) for s in stop if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="seq", leave=False, file=sys.stderr, disable=not enabled
    )


class TransformersGenerator:
    """Batched generation on a loaded causal LM and its tokenizer: ``model.generate``, or
    for greedy runs on a CPU Llama-family model the serving engine's step decoder.

    Args:
        model: the causal LM, on the device it runs on.
        tokenizer: its tokenizer, with the chat template conversations are rendered by.
        batch_size: prompts per ``generate`` call at most; halved for the rest of the
            run when a call runs out of memory, down to 1.
        progress: show a progress bar (stderr).
        step_decoder: greedy runs on a CPU Llama-family model go through the serving
            engine's decoder (``tutorlm.bulk.stepped``: the replies ``serve`` gives);
            False: always ``model.generate``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 16,
        progress: bool = True,
        step_decoder: bool = True,
    ):
        if batch_size < 1:
            raise GenerationError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        config = getattr(model, "config", None)
        self.max_length = getattr(config, "max_position_embeddings", None)
        self._stepped_greedy = None if step_decoder else False  # bulk/stepped.py

    @property
    def device(self):
        return next(self.model.parameters()).device

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, prompt: Prompt, budget: int) -> list[int]:
        """Prompt ids; a prompt too long for the context keeps its last tokens, leaving
        room for ``budget`` new ones."""
        return encode_prompt(self.tokenizer, prompt, self.prefix_token_id, self.max_length, budget)

    def _kwargs(self, sampling: Sampling, max_new_tokens: int) -> dict:
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:  # top_k 0 switches transformers' top-k filter off: None means all tokens
            kwargs.update(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k or 0,
            )
        return kwargs

    def _pad(self, rows: list[list[int]]):
        import torch

        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        max_new_tokens: Sequence[int] | None = None,
        desc: str = "generate",
    ) -> list[Generated]:
        import torch

        budgets = prompt_budgets(prompts, sampling, max_new_tokens)
        encoded = [self.encode(p, b) for p, b in zip(prompts, budgets, strict=True)]
        if sampling.greedy and self._stepped() is not None:
            return self._generate_stepped(encoded, budgets, sampling.stop, desc)
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Generated | None] = [None] * len(prompts)
        seed = sampling.seed or 0

        def forward(batch: list[int]):
            input_ids, mask = self._pad([encoded[i] for i in batch])
            kwargs = self._kwargs(sampling, max(budgets[i] for i in batch))
            with _seeded(None if sampling.greedy else seed + batch[0], input_ids.device):
                generated = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
            return generated[:, input_ids.shape[1] :].tolist()  # (B, new tokens)

        with _progress(len(prompts), desc, self.progress) as bar, torch.inference_mode():
            for batch, generated in self.batches(order, forward):
                for row, index in enumerate(batch):
                    results[index] = self._finish(generated[row], budgets[index], sampling.stop)
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def _stepped(self):
        """The serving engine's decoder for greedy runs on a CPU Llama-family model
        (``tutorlm.bulk.stepped``), or None where ``model.generate`` runs instead."""
        if self._stepped_greedy is None:
            from tutorlm.bulk.stepped import SteppedGreedy

            fits = SteppedGreedy.fits(self.model)
            self._stepped_greedy = SteppedGreedy(self.model, self.batch_size) if fits else False
        return self._stepped_greedy or None

    def _generate_stepped(self, encoded, budgets, stop: Sequence[str], desc: str):
        def stop_check(tokens: list[int]) -> bool:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            return any(s in text for s in stop)

        with _progress(len(encoded), desc, self.progress) as bar:
            generated = self._stepped().generate(
                encoded,
                budgets,
                end_id=self.tokenizer.eos_token_id,
                stop_check=stop_check if stop else None,
                on_done=lambda _: bar.update(1),
            )
        return [
            self._finish(tokens, budget, stop)
            for tokens, budget in zip(generated, budgets, strict=True)
        ]

    def _finish(self, tokens: list[int], budget: int, stop: Sequence[str]) -> Generated:
        """One row's answer: up to its end token, its first stop string or its budget
        (a batch runs to its longest budget; a row's tokens past its own are dropped)."""
        tokens = tokens[:budget]
        eos = self.tokenizer.eos_token_id
        ended = eos in tokens
        if ended:
            tokens = tokens[: tokens.index(eos) + 1]
        text, stopped = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop)
        if stopped and not ended:  # the rest of the row is padding
            while tokens and tokens[-1] == self.pad_token_id:
                tokens = tokens[:-1]
        done = ended or stopped or len(tokens) < budget
        return Generated(text, len(tokens), "stop" if done else "length")

    def batches(self, items: list, forward: Callable):
        """``(batch, forward(batch))`` over consecutive batches, halving the batch size
        on out-of-memory until one fits (as ``evaluate.batches.Batcher.batches``): the
        size that fits is known only once the longest prompts (first) have run. Only
        ``forward`` is retried, so nothing is counted twice.

        Raises:
            GenerationError: one prompt alone does not fit.
        """

        def alone(error: BaseException) -> GenerationError:
            return GenerationError(
                f"out of memory generating for one prompt alone on {self.device} ({error}); "
                "lower the new tokens, use a smaller dtype, or run on a device with more memory"
            )

        yield from halving_batches(self, items, forward, alone=alone)


def encode_prompt(tokenizer, prompt: Prompt, prefix: int, max_length: int | None, budget: int):
    """A prompt's ids: a conversation through the chat template (text unable to forge its
    control tokens), a string as it is (an empty one: the prefix token), cut from the
    left to leave ``budget`` tokens of the context."""
    from tutorlm.templates import chat_prompt_ids

    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [prefix]
    else:
        ids = chat_prompt_ids(tokenizer, list(prompt))
    if max_length:
        ids = ids[-max(1, max_length - budget) :]
    return ids


class _seeded:
    """Run a block on torch's global generator seeded with ``seed`` (None: untouched),
    restoring the caller's generator state afterwards."""

    def __init__(self, seed: int | None, device):
        self.seed, self.device, self.fork = seed, device, None

    def __enter__(self):
        import torch

        if self.seed is not None:
            devices = [self.device] if self.device.type == "cuda" else []
            self.fork = torch.random.fork_rng(devices=devices)
            self.fork.__enter__()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.fork is not None:
            self.fork.__exit__(*exc)


def open_generator(
    model,
    *,
    backend: str = "transformers",
    device: str = "auto",
    config: GenerationConfig | None = None,
    chat_template: str | None = None,
    seed: int = 0,
    progress: bool = True,
    online: bool | None = None,
) -> Generator:
    """A generator for a model: a spec or an already loaded ``(model, tokenizer)`` pair
    (transformers only, e.g. the scorer's).

    A spec is whatever :func:`tutorlm.models.load_model` reads: a bundled name, a
    directory, a hub id, and the project's other models: a quantize-stage copy (a
    packed one generates with its int8 / int4 CPU kernels, in its recorded dtype,
    so on the CPU only), a bare LoRA adapter (merged), a ``.gguf`` file (dequantized
    to float). vLLM takes float checkpoints only.

    Args:
        model: the spec or the loaded pair.
        backend: ``transformers`` or ``vllm`` (``config.backend`` when a config is given).
        device: a ``tutorlm.hardware.resolve_device`` setting, checked before loading.
        config: the recipe's ``generation`` block (batch size, dtype, vLLM settings).
        chat_template: the recipe's template for conversations; the model's own if None.
        seed: vLLM's engine seed.
        progress: progress bars on stderr.
        online: allow hub downloads of a spec.

    Raises:
        GenerationError: vLLM not installed, no CUDA GPU for it, or a loaded model given
            to vLLM (which loads its own weights).
    """
    config = config or GenerationConfig(backend=backend)
    if isinstance(model, tuple):
        if config.backend != "transformers":
            raise GenerationError("vLLM loads its own weights: give it a model spec, not a model")
        loaded, tokenizer = model
        use_chat_template(tokenizer, chat_template)
        return TransformersGenerator(
            loaded, tokenizer, batch_size=config.batch_size, progress=progress
        )
    if config.backend == "vllm":
        from tutorlm.bulk.vllm_engine import open_vllm

        return open_vllm(model, device, config, chat_template, seed, progress, online)
    from tutorlm.models import load_model

    device = resolve_device(device)
    dtype = (
        generation_dtype(device) if config.dtype == "auto" else device_dtype(config.dtype, device)
    )
    loaded, tokenizer = load_model(model, dtype=dtype, device=device, online=online)
    use_chat_template(tokenizer, chat_template)
    return TransformersGenerator(loaded, tokenizer, batch_size=config.batch_size, progress=progress)


def use_chat_template(tokenizer, chat_template: str | None) -> None:
    if chat_template is not None:
        from tutorlm.templates import apply_template

        apply_template(tokenizer, chat_template)
