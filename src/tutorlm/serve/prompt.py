"""A conversation's prompt ids in which client text cannot forge control tokens.

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

from __future__ import annotations

import re
import secrets


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template, ready for the
    assistant's reply, with the messages' text unable to produce special tokens."""
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
