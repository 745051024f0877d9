"""Serve a GGUF file (``tutorlm quantize --gguf q8_0``) through llama.cpp.

``pip install 'tutorlm[llamacpp]'`` installs llama-cpp-python, which compiles
llama.cpp from source: that takes minutes, which is why it is an extra of its own.

Prompts are token ids of OUR chat template, never llama.cpp's: the tokenizer is the
Hugging Face tokenizer stored in the GGUF file itself (vocabulary, merges, special
ids and chat template, read by transformers' GGUF reader, the same reader
``tutorlm quantize --gguf`` checks its export with). So a GGUF needs nothing beside
it, and its ids are the ids the model was trained on. ``--chat-template`` applies as
for any model. Decoding uses llama-cpp-python's low-level ``Llama.generate``: token
ids in, token ids out, turned into text by :class:`IncrementalText` as in
``LocalEngine``, so stop strings, end-of-turn ids and usage behave the same.

llama-cpp-python's ``Llama`` is not thread-safe: one worker thread owns it and
serves requests one at a time, from a queue of at most ``max_queue``. Consecutive
prompts that share a beginning (the system prompt, the conversation so far) reuse
llama.cpp's cache for it (``generate(reset=True)`` keeps the common prefix).
"""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

from tutorlm.serve.engine import (
    EngineBusy,
    EngineError,
    GenerationRequest,
    QueuedEngine,
    _Job,
    _Row,
    past_deadline,
)
from tutorlm.serve.text import IncrementalText

LLAMACPP_INSTALL = "pip install 'tutorlm[llamacpp]'"

logger = logging.getLogger(__name__)


def load_gguf_tokenizer(path: Path):
    """The Hugging Face tokenizer stored in a GGUF file (with its chat template).

    Raises:
        EngineError: transformers cannot rebuild a tokenizer from this file.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError) as error:
        raise EngineError(
            f"{path}: transformers cannot read the tokenizer stored in this GGUF file "
            f"({error}); serve the model directory it was exported from instead"
        ) from None


def open_llama(path: Path, *, n_ctx: int = 0, n_threads: int | None = None, gpu: bool = False):
    """A ``llama_cpp.Llama`` for ``path``: its trained context (``n_ctx=0``), quiet.

    Raises:
        EngineError: llama-cpp-python is not installed, or the file does not load.
    """
    try:
        import llama_cpp
    except ImportError:
        raise EngineError(
            f"serving a GGUF file needs llama-cpp-python: {LLAMACPP_INSTALL} (it compiles "
            "llama.cpp from source, which takes several minutes); or --engine transformers "
            "serves it dequantized to float"
        ) from None
    from tutorlm.hardware import thread_count

    threads = n_threads or thread_count()
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=-1 if gpu else 0,
            verbose=False,
        )
    except ValueError as error:  # llama-cpp-python's "Failed to load model from file"
        raise EngineError(f"llama.cpp could not load {path}: {error}") from None


def open_llamacpp_engine(
    spec: str,
    *,
    name: str,
    chat_template: str | None = None,
    device: str = "auto",
    max_queue: int = 64,
    n_ctx: int = 0,
) -> LlamaCppEngine:
    """The engine that serves the GGUF file ``spec``; all layers on the GPU when
    ``device`` resolves to CUDA (a CPU build of llama.cpp ignores that)."""
    from tutorlm.hardware import resolve_device
    from tutorlm.templates import apply_template

    path = Path(spec).expanduser()
    if not path.is_file():
        raise EngineError(f"no GGUF file at {path}")
    gpu = resolve_device(device).startswith("cuda")
    llama = open_llama(path, n_ctx=n_ctx, gpu=gpu)
    tokenizer = apply_template(load_gguf_tokenizer(path), chat_template)
    return LlamaCppEngine(llama, tokenizer, name=name, max_queue=max_queue)


def llama_sampling(request: GenerationRequest) -> dict:
    """``Llama.generate`` keyword arguments for a request: greedy at temperature 0,
    else nucleus sampling alone (llama.cpp's default top-k 40 and min-p 0.05 switched
    off, as transformers applies neither here); never a repeat penalty."""
    if request.temperature <= 0:
        return {"temp": 0.0, "repeat_penalty": 1.0}
    return {
        "temp": request.temperature,
        "top_p": request.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
    }


class LlamaCppEngine(QueuedEngine):
    """A ``llama_cpp.Llama`` behind a request queue, decoded one request at a time.

    Args:
        llama: a loaded ``llama_cpp.Llama``; this engine's worker is its only user.
        tokenizer: the Hugging Face tokenizer of the same vocabulary, with the chat
            template, for prompt ids and reply text.
        name: the served model id.
        max_queue: requests queued or running; more get ``EngineBusy``.
    """

    def __init__(self, llama, tokenizer, *, name: str, max_queue: int = 64):
        super().__init__(tokenizer, name=name, max_queue=max_queue)
        self.llama = llama
        self.context_window: int | None = llama.n_ctx()
        """Most tokens, prompt and reply together, that llama.cpp's context holds."""
        self.end_ids = {i for i in (tokenizer.eos_token_id, llama.token_eos()) if i is not None}
        self.end_ids.discard(-1)  # llama.cpp's "no such token"
        self._worker = threading.Thread(
            target=self._serve_forever, name="tutorlm-llamacpp", daemon=True
        )
        self._worker.start()

    def close(self) -> None:
        """Stop after the running request; queued ones get an error; free the model."""
        self._stop_worker(self._worker)
        if not self._worker.is_alive():
            self.llama.close()

    def _next_job(self) -> _Job | None:
        with self._cond:
            return self._wait_for_job()

    def _serve_forever(self) -> None:
        while (job := self._next_job()) is not None:
            if job.stream.cancelled.is_set():
                job.stream.push(EngineError("cancelled"))
                continue
            if past_deadline(job.request.deadline):
                job.stream.push(EngineBusy("timed out waiting in the queue; retry later"))
                continue
            try:
                self._decode(job)
            except EngineError as error:
                job.stream.push(error)
            except Exception:  # the client hears that it failed, the log says why
                logger.exception("llama.cpp generation failed")
                job.stream.push(EngineError("generation failed; the server's log has why"))

    def _decode(self, job: _Job) -> None:
        """Feed the prompt's ids to llama.cpp and stream the reply, token by token."""
        row = _Row(
            job.request,
            job.stream,
            job.prompt_ids,
            IncrementalText(self.tokenizer, job.request.stop),
        )
        room = self.context_window - len(job.prompt_ids)
        if room <= 0:
            raise EngineError(
                f"the prompt has {len(job.prompt_ids)} tokens and the context holds "
                f"{self.context_window}"
            )
        if job.request.temperature > 0:  # a fresh draw per request, not the load-time seed
            self.llama.set_seed(secrets.randbits(31))
        tokens = self.llama.generate(job.prompt_ids, reset=True, **llama_sampling(job.request))
        try:
            for token in tokens:
                if row.take(int(token), self.end_ids):
                    break
                if row.generated >= room:  # the next token would not fit the context
                    row.close("length")
                    break
        finally:
            tokens.close()
        row.close("length")
