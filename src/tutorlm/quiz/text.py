"""Text shared by the quiz's writers and checks: the blank, notes' maths made plain."""

from __future__ import annotations

import re

BLANK = "____"
"""What stands for the answer in a fill-in-the-blank stem."""

_SYMBOLS = {
    r"\times": "×",
    r"\cdot": "·",
    r"\approx": "≈",
    r"\neq": "≠",
    r"\leq": "≤",
    r"\geq": "≥",
    r"\to": "→",
    r"\infty": "∞",
    r"\dots": "…",
    r"\ldots": "…",
    r"\pm": "±",
    r"\Delta": "Δ",
    r"\lambda": "λ",
    r"\theta": "θ",
    r"\pi": "π",
    r"\mu": "μ",
    r"\sigma": "σ",
    r"\rho": "ρ",
    r"\alpha": "α",
    r"\beta": "β",
    r"\omega": "ω",
    r"\sum": "Σ",
    r"\int": "∫",
    r"\mid": "|",
    r"\cup": "∪",
    r"\cap": "∩",
}
_SUPERSCRIPTS = str.maketrans("0123456789-n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻ⁿ")


def plain_math(text: str) -> str:
    """Inline LaTeX as a reader sees it: ``$KE = \\frac12 m v^2$`` -> ``KE = 1/2 m v²``.

    Stems and explanations are read in a terminal and a web page, where ``\\frac``
    is noise; the graders' own normalisation reads both forms alike.
    """

    def one(match: re.Match) -> str:
        body = match[1]
        body = re.sub(r"\\[dt]?frac\s*(\d)\s*(\d)", r"\1/\2", body)
        body = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", body)
        body = re.sub(r"\\(?:text|mathrm|mathbb|operatorname)\{([^{}]*)\}", r"\1", body)
        for command, symbol in sorted(_SYMBOLS.items(), key=lambda item: -len(item[0])):
            body = re.sub(re.escape(command) + r"(?![A-Za-z])\s*", symbol, body)
        body = re.sub(r"\^\{?(-?[0-9n])\}?", lambda m: m[1].translate(_SUPERSCRIPTS), body)
        body = re.sub(r"\\[,;! ]", " ", body).replace("\\", "")
        return body.replace("{", "").replace("}", "")

    return re.sub(r"\$([^$]+)\$", one, text)


def without_article(term: str) -> str:
    return re.sub(r"^(?:the|a|an) ", "", term, flags=re.IGNORECASE)
