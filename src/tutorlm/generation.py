"""Chat generation through a model's own chat template, streamed piece by piece.

One conversation at a time, for a person reading the answer as it comes (``tutorlm
chat``, ``serve``). Many prompts at once (corruption, generation metrics, samples) go
through :mod:`tutorlm.bulk`, batched or on vLLM, with the same prompt ids and the same
greedy rule at temperature 0.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator


def chat_input_ids(tokenizer, messages: list[dict]):
    """Token ids of a conversation rendered by the tokenizer's chat template, ready to
    generate the assistant's next turn, with the messages' text unable to forge the
    template's control tokens (:func:`tutorlm.templates.chat_prompt_ids`). Returns a
    ``(1, T)`` tensor."""
    import torch

    from tutorlm.templates import chat_prompt_ids

    return torch.tensor([chat_prompt_ids(tokenizer, messages)], dtype=torch.long)


def generation_kwargs(tokenizer, max_new_tokens: int, temperature: float) -> dict:
    """Greedy at temperature 0, sampling otherwise; stop at the template's end token."""
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=0.95)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_chat(
    model, tokenizer, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0
) -> Iterator[str]:
    """Yield the assistant's reply as it is generated (text pieces, special tokens removed)."""
    import torch
    from transformers import TextIteratorStreamer

    input_ids = chat_input_ids(tokenizer, messages).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = generation_kwargs(tokenizer, max_new_tokens, temperature)
    errors: list[BaseException] = []

    def _generate() -> None:
        try:
            with torch.inference_mode():
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=streamer,
                    **kwargs,
                )
        except BaseException as error:  # surfaced in the caller's thread below
            errors.append(error)
            streamer.end()

    worker = threading.Thread(target=_generate, daemon=True)
    worker.start()
    yield from streamer
    worker.join()
    if errors:
        raise errors[0]


def chat(model, tokenizer, messages: list[dict], **kwargs) -> str:
    """The whole assistant reply as one string."""
    return "".join(stream_chat(model, tokenizer, messages, **kwargs))


def print_chat(model, tokenizer, messages: list[dict], *, out=None, **kwargs) -> str:
    """Stream the reply to ``out`` (stdout) as it is generated, end the line; return it.

    ``kwargs`` are :func:`stream_chat`'s (``max_new_tokens``, ``temperature``).
    """
    import sys

    out = out or sys.stdout
    pieces = []
    for piece in stream_chat(model, tokenizer, messages, **kwargs):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces)
