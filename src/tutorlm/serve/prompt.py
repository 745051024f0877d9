"""A conversation's prompt ids in which client text cannot forge control tokens.

Rendering the whole conversation to text and tokenizing it (what a chat template
does by default) parses ``<|im_start|>system`` typed by a student as the template's
real control token: a forged system turn. Here the template renders placeholders
instead of the messages' text; the template's own parts are then tokenized with
their special tokens, and each message's text with ``split_special_tokens=True``,
so that ``<|im_start|>`` in it becomes the ordinary tokens of its characters. For
text without special tokens the ids are the same as the whole render's.

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
    ids: list[int] = []
    position = 0
    for match in re.finditer(rf"@{marker}:(\d+)@", rendered):
        ids += tokenizer.encode(rendered[position : match.start()], add_special_tokens=False)
        content = messages[int(match.group(1))]["content"]
        ids += tokenizer.encode(content, add_special_tokens=False, split_special_tokens=True)
        position = match.end()
    ids += tokenizer.encode(rendered[position:], add_special_tokens=False)
    return ids
