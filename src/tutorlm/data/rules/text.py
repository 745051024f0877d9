"""Text helpers the rules share: HTML to text, final answers, numbers, words."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)")
_BLOCKS = {"p", "div", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "hr"}


def html_to_text(html: str) -> str:
    """Stack Exchange HTML as plain text that keeps code blocks and LaTeX.

    ``<pre>`` blocks become fenced code (their whitespace kept as is), inline
    ``<code>`` becomes backticks, list items become "- " lines, paragraphs are
    separated by blank lines. LaTeX lives in the text itself (``$...$``), so it
    survives as soon as entities such as ``&lt;`` are decoded.
    """
    from bs4 import BeautifulSoup, NavigableString, Tag

    def render(node) -> str:
        if isinstance(node, NavigableString):
            return re.sub(r"\s+", " ", str(node))
        if not isinstance(node, Tag):
            return ""
        name = node.name
        if name == "pre":
            return "\n\n```\n" + node.get_text().strip("\n") + "\n```\n\n"
        if name == "code":
            return "`" + node.get_text() + "`"
        if name == "br":
            return "\n"
        if name == "img":
            return node.get("alt", "")
        inner = "".join(render(child) for child in node.children)
        if name == "li":
            return "\n- " + inner.strip()
        if name in ("ul", "ol"):
            return "\n" + inner + "\n\n"
        if name == "blockquote":
            quoted = "\n".join("> " + line for line in inner.strip().splitlines())
            return "\n\n" + quoted + "\n\n"
        if name in _BLOCKS:
            return "\n\n" + inner.strip() + "\n\n"
        return inner

    soup = BeautifulSoup(html, "html.parser")
    text = "".join(render(child) for child in soup.children)
    lines = [line.rstrip() for line in text.splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def has_alnum(text: str | None) -> bool:
    """Whether a text holds at least one letter or digit (EPFLLaMA's emptiness rule)."""
    return bool(text) and any(ch.isalnum() for ch in text)


def normalize(text: str) -> str:
    """Whitespace collapsed and lower case: the key of exact deduplication."""
    return " ".join(text.split()).lower()


def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, underscore); punctuation is ignored, as in
    lm-evaluation-harness's decontamination."""
    return _WORD.findall(text.lower())


def numbers_in(text: str) -> list[re.Match]:
    """Matches of the plain numbers in a text (integers and decimals, with sign)."""
    return list(_NUMBER.finditer(text))


def parse_number(text: str) -> int | float | None:
    """The value of a text that is exactly one number ("42", "-3.5", "1,200"), else None."""
    cleaned = text.strip().replace(",", "").rstrip(".")
    cleaned = cleaned.removeprefix("$").removesuffix("$").strip()
    if re.fullmatch(r"-?\d+", cleaned):
        return int(cleaned)
    if re.fullmatch(r"-?\d+\.\d+", cleaned):
        return float(cleaned)
    return None


def format_number(value: int | float, like: str = "") -> str:
    """A number written the way ``like`` writes its numbers (same decimals)."""
    if isinstance(value, int):
        return f"{value:,}" if "," in like else str(value)
    decimals = len(like.split(".")[1]) if "." in like else 2
    return f"{value:.{decimals}f}"


_BOX_OPENERS = ("\\boxed{", "\\fbox{", "\\boxed ")


def last_boxed(text: str) -> str | None:
    """Content of the last boxed answer in a text, if any.

    The forms MATH's reference extraction (Hendrycks et al.'s ``last_boxed_only_string``)
    accepts: ``\\boxed{...}`` and ``\\fbox{...}`` with balanced braces, and the
    space form ``\\boxed 5`` (up to the closing ``$``, or the end of the text).
    """
    start, opener = max((text.rfind(o), o) for o in _BOX_OPENERS)
    if start < 0:
        return None
    begin = start + len(opener)
    if opener == "\\boxed ":
        content = text[begin:].split("$")[0].strip()
        return content or None
    depth = 0
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


def split_steps(text: str) -> list[str]:
    """An answer cut into steps: its lines, or its sentences when it is one line."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > 1:
        return lines
    return [part for part in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", text.strip()) if part]
