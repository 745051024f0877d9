"""Serve through vLLM's async engine in this process (``--engine vllm``, CUDA GPUs).

vLLM batches continuously: a request joins the running batch at the next step and
leaves it when done, with paged attention for the cache. This engine only hands
requests to it and streams their tokens back:

- prompts are token ids of OUR chat template (``{"prompt_token_ids": ids}``), so
  vLLM never renders a template of its own;
- vLLM's outputs carry the reply's token ids so far (cumulative); each new id goes
  through the same rule as every other engine (``engine._Row.take``: end-of-turn ids,
  stop strings by :class:`IncrementalText`, ``max_tokens``, deadline), so replies and
  usage are counted alike whatever engine serves;
- a reply that ends on our side (stop string, deadline, client gone) aborts its vLLM
  request, which frees its place in the batch at once.

vLLM's engine lives on one asyncio event loop, which its output handler is bound to;
this engine runs that loop in a thread of its own, so the terminal chat (threads) and
the HTTP API (another loop) submit to it alike. Tested against a fake ``vllm``
module only: it has never run on a GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from tutorlm.serve.engine import (
    EngineBusy,
    EngineError,
    GenerationRequest,
    QueuedEngine,
    TokenStream,
    _Row,
    past_deadline,
)
from tutorlm.serve.text import IncrementalText

logger = logging.getLogger(__name__)


def vllm_sampling(request: GenerationRequest, end_ids: set[int]) -> dict:
    """``vllm.SamplingParams`` arguments of one request.

    Stop strings are not given to vLLM: they are found in our own decoding of the
    ids, as for every engine, and the request is aborted there. So vLLM need not
    detokenize at all.
    """
    params = {
        "n": 1,
        "max_tokens": request.max_tokens,
        "stop_token_ids": sorted(end_ids),
        "detokenize": False,
    }
    if request.temperature <= 0:
        return {**params, "temperature": 0.0, "top_p": 1.0}
    return {**params, "temperature": request.temperature, "top_p": request.top_p}


def open_vllm_engine(
    spec: str,
    *,
    name: str,
    chat_template: str | None = None,
    device: str = "auto",
    max_batch: int = 8,
    max_queue: int = 64,
    trust_remote_code: bool = False,
    online: bool | None = None,
) -> VllmServingEngine:
    """vLLM's async engine on ``spec`` (safetensors only), ``max_batch`` sequences at once.

    Raises:
        EngineError: vLLM is missing, there is no CUDA GPU, or the model is not a
            safetensors checkpoint vLLM can load.
    """
    from tutorlm.bulk import VLLM_INSTALL
    from tutorlm.serve.engines import vllm_unavailable

    try:
        import vllm
    except ImportError:
        raise EngineError(
            f"--engine vllm needs vLLM, which is not installed: {VLLM_INSTALL}"
        ) from None
    from tutorlm.hardware import generation_dtype, resolve_device
    from tutorlm.models import load_tokenizer, require_safetensors, resolve_model
    from tutorlm.templates import apply_template

    path = Path(resolve_model(spec, online=online))
    if (why := vllm_unavailable(str(path), device)) is not None:
        raise EngineError(f"--engine vllm cannot run: {why}")
    require_safetensors(path)  # and load_format below: vLLM never unpickles weights
    tokenizer = apply_template(load_tokenizer(path, online=online), chat_template)
    dtype = str(generation_dtype(resolve_device(device))).removeprefix("torch.")
    args = vllm.AsyncEngineArgs(
        model=str(path),
        tokenizer=str(path),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        load_format="safetensors",
        max_num_seqs=max_batch,
        disable_log_stats=True,
    )
    return VllmServingEngine(
        lambda: vllm.AsyncLLMEngine.from_engine_args(args),
        vllm.SamplingParams,
        tokenizer,
        name=name,
        max_queue=max_queue,
        end_ids=end_of_turn_ids(path, tokenizer),
    )


def end_of_turn_ids(path: Path, tokenizer) -> set[int]:
    """The tokenizer's end of sequence and the ``eos_token_id`` of the model's
    ``generation_config.json``: the ids ``LocalEngine`` ends a reply at."""
    import json

    ids = {tokenizer.eos_token_id}
    config = path / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}


class VllmServingEngine(QueuedEngine):
    """vLLM's async engine behind the engine interface, on an event loop of its own.

    Args:
        make_engine: builds the ``vllm.AsyncLLMEngine`` (called on this engine's loop).
        sampling_params: ``vllm.SamplingParams``.
        tokenizer: the served model's Hugging Face tokenizer, with the chat template.
        name: the served model id.
        max_queue: requests in vLLM's hands at once; more get ``EngineBusy``.
        end_ids: the ids that end a turn (default the tokenizer's end of sequence).
    """

    def __init__(
        self,
        make_engine,
        sampling_params,
        tokenizer,
        *,
        name: str,
        max_queue: int = 64,
        end_ids: set[int] | None = None,
    ):
        super().__init__(tokenizer, name=name, max_queue=max_queue)  # no queue: vLLM's
        self._sampling_params = sampling_params
        self.end_ids = end_ids or {tokenizer.eos_token_id} - {None}
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tutorlm-vllm", daemon=True
        )
        self._thread.start()
        try:
            self.engine = self._on_loop(make_engine).result()
        except BaseException:
            self._stop_loop()
            raise
        window = getattr(getattr(self.engine, "model_config", None), "max_model_len", None)
        self.context_window: int | None = window
        """Most tokens, prompt and reply together, vLLM accepts (its ``max_model_len``)."""

    def _on_loop(self, function) -> Future:
        """Run ``function()`` on the engine's loop (vLLM binds its tasks to it)."""

        async def call():
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self._loop)

    def submit(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None
    ) -> TokenStream:
        """Hand a request to vLLM; its reply streams into the returned :class:`TokenStream`.

        Raises:
            EngineBusy: when ``max_queue`` requests are already in vLLM's hands.
        """
        stream = TokenStream(loop, request.deadline)
        row = _Row(
            request,
            stream,
            self.prompt_ids(request.messages),
            IncrementalText(self.tokenizer, request.stop),
        )
        with self._cond:
            self._take_place()
        task: list[Future] = []
        stream.on_end = lambda: self._ended(stream, task)
        task.append(asyncio.run_coroutine_threadsafe(self._reply(row), self._loop))
        return stream

    def close(self) -> None:
        """Abort what is running, shut vLLM down and stop the loop."""
        with self._cond:
            self._closed = True
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                self._on_loop(shutdown).result(timeout=30)
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    def _ended(self, stream: TokenStream, task: list[Future]) -> None:
        """A reply has ended (or its reader left): free its place; abort it if still running."""
        self._release()
        if stream.cancelled.is_set() and task:
            task[0].cancel()  # cancels the coroutine, whose vLLM request is then aborted

    async def _reply(self, row: _Row) -> None:
        """One request: vLLM's outputs turned into the row's pieces and its Finish."""
        if row.stream.cancelled.is_set():
            row.stream.push(EngineError("cancelled"))
            return
        if past_deadline(row.request.deadline):
            row.stream.push(EngineBusy("timed out waiting in the queue; retry later"))
            return
        params = self._sampling_params(**vllm_sampling(row.request, self.end_ids))
        request_id = f"tutorlm-{next(self._ids)}"
        left = None
        if row.request.deadline is not None:
            left = max(0.0, row.request.deadline - time.monotonic())
        try:
            async with asyncio.timeout(left):
                await self._relay(row, params, request_id)
        except TimeoutError:  # the deadline came first: the reply so far
            row.close("length")
        except asyncio.CancelledError:
            row.close("length")
            raise
        except Exception:  # the client hears that it failed, the log says why
            logger.exception("vLLM generation failed for %s", request_id)
            row.stream.push(EngineError("generation failed; the server's log has why"))
            return
        row.close("length")

    async def _relay(self, row: _Row, params, request_id: str) -> None:
        """Feed each new token id of vLLM's cumulative outputs to the row.

        A reply that ends on our side before vLLM finished it (stop string,
        ``max_tokens`` reached before vLLM's last output, deadline) leaves the loop:
        closing vLLM's generator aborts the request. One vLLM finished is read to its
        end, so nothing is aborted that is already done.
        """
        prompt = {"prompt_token_ids": row.prompt_ids}
        seen = 0
        async with contextlib.aclosing(self.engine.generate(prompt, params, request_id)) as outputs:
            async for output in outputs:
                best = output.outputs[0]
                for token in best.token_ids[seen:]:
                    if row.take(int(token), self.end_ids):
                        break
                seen = len(best.token_ids)
                if output.finished:
                    row.close("stop" if best.finish_reason == "stop" else "length")
                elif row.done:
                    return
