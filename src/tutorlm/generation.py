"""Chat generation through a model's own chat template, streamed piece by piece.

One conversation at a time, for a person reading the answer as it comes (``tutorlm
ask``) or a stage that wants one reply (quiz writing, the quantize stage's check);
``tutorlm chat`` and ``serve`` go through an engine (``tutorlm.serve``). Many prompts at once (corruption, generation metrics, samples) go
through :mod:`tutorlm.bulk`, batched or on vLLM, with the same prompt ids and the same
greedy rule at temperature 0.
"""

from __future__ import annotations

from collections.abc import Callable


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


def generate_chat(
    model,
    tokenizer,
    messages: list[dict],
    emit: Callable[[str], None],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> None:
    """Generate the assistant's reply, handing each text piece to ``emit`` as it comes
    (special tokens removed).

    The model runs in the calling thread: a model loaded on one thread and run on
    another decodes ~45 % slower on a CPU (GNU OpenMP puts the second thread's pool to
    sleep between ops; ``tutorlm.hardware.reserve_cores_for_engine``), so a one-shot
    reply is not handed to a worker thread.
    """
    import torch
    from transformers import TextStreamer

    class _Pieces(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                emit(text)

    input_ids = chat_input_ids(tokenizer, messages).to(model.device)
    streamer = _Pieces(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=streamer,
            **generation_kwargs(tokenizer, max_new_tokens, temperature),
        )


def chat(model, tokenizer, messages: list[dict], **kwargs) -> str:
    """The whole assistant reply as one string (``kwargs``: :func:`generate_chat`'s)."""
    pieces: list[str] = []
    generate_chat(model, tokenizer, messages, pieces.append, **kwargs)
    return "".join(pieces)


def print_chat(model, tokenizer, messages: list[dict], *, out=None, **kwargs) -> str:
    """Stream the reply to ``out`` (stdout) as it is generated, end the line; return it.

    ``kwargs`` are :func:`generate_chat`'s (``max_new_tokens``, ``temperature``).
    """
    import sys

    out = out or sys.stdout
    pieces: list[str] = []

    def show(piece: str) -> None:
        pieces.append(piece)
        out.write(piece)
        out.flush()

    generate_chat(model, tokenizer, messages, show, **kwargs)
    out.write("\n")
    return "".join(pieces)
