"""Named chat templates, for base models that ship none (TinyLlama) or recipes that
prescribe one (EPFLLaMA trains with Zephyr's).

The template a model is trained with is saved with every checkpoint, so that what
is served is what was trained (the anchors' most reported failure is a template
that differs between training and inference).
"""

from __future__ import annotations

import re
import secrets

from tutorlm.errors import TutorlmError

# Zephyr-7B-beta's format, as shown in EPFLLaMA's appendix A: a role tag on its own
# line, the text, then the end-of-sequence token.
ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# ChatML, the format of SmolLM2 and Qwen chat models.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

NAMED_TEMPLATES = {"zephyr": ZEPHYR, "chatml": CHATML}

TUTOR_SYSTEM_PROMPT = (
    "You are an experienced teacher who answers the STEM-related question asked by a student below."
)
"""EPFLLaMA's system prompt (its appendix A)."""


def resolve_template(name_or_jinja: str | None) -> str | None:
    """A named template's Jinja text, a Jinja string as given, or None (keep the model's)."""
    if name_or_jinja is None:
        return None
    if name_or_jinja in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[name_or_jinja]
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise TutorlmError(
        f"unknown chat template {name_or_jinja!r}: use one of {sorted(NAMED_TEMPLATES)} "
        "or a Jinja template string"
    )


def apply_template(tokenizer, name_or_jinja: str | None):
    """Set the recipe's chat template on a tokenizer; fail clearly if none is usable.

    Returns the tokenizer, so calls chain.
    """
    template = resolve_template(name_or_jinja)
    if template is not None:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise TutorlmError(
            "this model has no chat template: set `chat_template: zephyr` (or chatml, or a "
            "Jinja string) in the recipe"
        )
    return tokenizer


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template, ready for the
    assistant's reply, with the messages' text unable to produce special tokens.

    Rendering the whole conversation to text and tokenizing it (what a chat template
    does by default) parses ``<|im_start|>system`` typed by a student as the template's
    real control token: a forged system turn. Here the template renders placeholders
    instead of the messages' text, so every special token left in the render is the
    template's own. The render is cut at those tokens, the messages' text is put back
    in place of the placeholders, and each stretch between two template tokens is
    tokenized with ``split_special_tokens=True``: ``<|im_start|>`` typed by a client
    becomes the ordinary tokens of its characters. A tokenizer also cuts the text at
    special tokens before anything else, so text without them gets exactly the ids of
    the whole render.

    Every message counts as client text, system prompts and notes included: a client may
    send any turn, and notes are documents written by others.
    """
    marker = secrets.token_hex(8)
    placeholders = [
        {**message, "content": f"@{marker}:{number}@"} for number, message in enumerate(messages)
    ]
    rendered = tokenizer.apply_chat_template(
        placeholders, add_generation_prompt=True, tokenize=False
    )
    special = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
    pattern = "|".join([rf"@{marker}:(\d+)@", *(re.escape(token) for token in special)])
    ids: list[int] = []
    stretch: list[str] = []

    def flush() -> None:
        if stretch:
            text = "".join(stretch)
            ids.extend(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
            stretch.clear()

    position = 0
    for match in re.finditer(pattern, rendered):
        stretch.append(rendered[position : match.start()])
        if match.group(1) is not None:
            stretch.append(messages[int(match.group(1))]["content"])
        else:
            flush()
            ids.append(tokenizer.convert_tokens_to_ids(match.group(0)))
        position = match.end()
    stretch.append(rendered[position:])
    flush()
    return ids
