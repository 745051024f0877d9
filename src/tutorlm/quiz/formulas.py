"""Formulas of the notes as functions: ``$F = ma$`` -> ``F(m, a) = m * a``.

Only the simple algebra that notes write inline is read: one symbol on the left
(``F``, ``KE``, ``\\Delta U``), and on the right symbols of one letter (with an
optional subscript), numbers, ``+ - / ^``, ``\\cdot``, ``\\times``, brackets,
``\\frac{a}{b}`` and ``\\frac12``. Products are written by juxtaposition (``mgh``),
as in the notes. Anything else (``\\sqrt``, ``\\cos``, sums, a second ``=``) is not
a formula this module evaluates, and no numeric problem is made from it.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass

_MATH = re.compile(r"\$([^$]+)\$")
_GREEK = ("lambda", "theta", "rho", "mu", "sigma", "omega", "alpha", "beta", "gamma", "tau")
_UNSUPPORTED = re.compile(
    r"\\(?!frac|Delta|cdot|times|" + "|".join(_GREEK) + r")[A-Za-z]+|[=<>!|,]"
)
_LEFT = re.compile(r"^\s*((?:\\Delta\s*)?[A-Za-z]{1,2}(?:_\{?[A-Za-z0-9]\}?)?)\s*=\s*(.+?)\s*$")
_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<symbol>\\Delta\s*[A-Za-z](?:_\{?\w\}?)?"
    r"|\\(?:" + "|".join(_GREEK) + r")\b|[A-Za-z](?:_\{?\w\}?)?)|(?P<op>\*\*|[-+*/()]))"
)
_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


@dataclass(frozen=True)
class Formula:
    """A formula of the notes that can be evaluated.

    Attributes:
        latex: as written between the ``$`` signs, e.g. ``KE = \\frac12 m v^2``.
        target: the symbol on the left, e.g. ``KE``.
        symbols: the symbols on the right, in order of first appearance.
        expression: Python of the right side over names ``s0``, ``s1`` ... (one per symbol).
    """

    latex: str
    target: str
    symbols: tuple[str, ...]
    expression: str

    def evaluate(self, values: dict[str, float]) -> float:
        """The left side's value for ``values`` of every symbol on the right.

        Raises:
            KeyError: a symbol without a value.
            ZeroDivisionError: a value that divides by zero.
        """
        names = {f"s{i}": float(values[symbol]) for i, symbol in enumerate(self.symbols)}
        return _evaluate(ast.parse(self.expression, mode="eval").body, names)


def _evaluate(node: ast.AST, names: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, names)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    raise ValueError(f"not a formula expression: {ast.dump(node)}")


def plain_symbol(symbol: str) -> str:
    """``\\Delta T`` -> ``ΔT``, ``\\lambda`` -> ``λ``, ``R_{1}`` -> ``R_1``: as a student types it."""
    greek = {"lambda": "λ", "theta": "θ", "rho": "ρ", "mu": "μ", "sigma": "σ", "omega": "ω",
             "alpha": "α", "beta": "β", "gamma": "γ", "tau": "τ"}  # fmt: skip
    text = re.sub(r"\\Delta\s*", "Δ", symbol)
    text = re.sub(r"\\([a-z]+)", lambda m: greek.get(m[1], m[1]), text)
    return text.replace("{", "").replace("}", "")


def _unfrac(text: str) -> str:
    text = re.sub(r"\\[dt]?frac\s*(\d)\s*(\d)", r"(\1/\2)", text)
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", text)
    return text


def parse_formula(latex: str) -> Formula | None:
    """The formula of one ``$...$`` span, or None where it is not one this module reads."""
    match = _LEFT.match(latex)
    if match is None:
        return None
    target, right = match[1], match[2]
    right = _unfrac(right).replace("\\cdot", "*").replace("\\times", "*")
    right = re.sub(r"\^\{([^{}]+)\}", r"**(\1)", right)
    right = re.sub(r"\^(\d|[A-Za-z])", r"**\1", right)
    if _UNSUPPORTED.search(right) or "{" in right or "}" in right:
        return None
    symbols: list[str] = []
    pieces: list[str] = []
    position, previous = 0, None
    while position < len(right):
        token = _TOKEN.match(right, position)
        if token is None or token.end() == position:
            return None
        position = token.end()
        kind = token.lastgroup
        operand = kind in ("number", "symbol") or token["op"] == "("
        if operand and previous in ("number", "symbol", ")"):
            if len(pieces) >= 2 and pieces[-2] == "/":
                return None  # "Q/RT": is it Q/(RT) or (Q/R)T? notes mean the first
            pieces.append("*")  # juxtaposition multiplies
        if kind == "number":
            pieces.append(token["number"])
        elif kind == "symbol":
            symbol = " ".join(token["symbol"].split()).replace("\\Delta ", "\\Delta ")
            if symbol not in symbols:
                symbols.append(symbol)
            pieces.append(f"s{symbols.index(symbol)}")
        else:
            pieces.append(token["op"])
        previous = ")" if token["op"] == ")" else kind if kind != "op" else "op"
    if not symbols or target in symbols or "e" in symbols:
        return None  # e is Euler's number, not a quantity to give a value
    expression = " ".join(pieces)
    try:
        ast.parse(expression, mode="eval")
    except SyntaxError:
        return None
    return Formula(latex.strip(), " ".join(target.split()), tuple(symbols), expression)


def formulas_in(sentence: str) -> list[Formula]:
    """The formulas of a sentence this module can evaluate, in order.

    A two-letter left side is a name (``KE``) only where the sentence has two words in
    a row with those initials ("kinetic energy"); otherwise it is a product (``PV``)."""
    words = [word[0].lower() for word in re.findall(r"[A-Za-z]+", _MATH.sub(" ", sentence))]
    initials = {a + b for a, b in zip(words, words[1:], strict=False)}
    found = []
    for span in _MATH.findall(sentence):
        formula = parse_formula(span)
        if formula is None:
            continue
        if re.fullmatch(r"[A-Za-z]{2}", formula.target) and formula.target.lower() not in initials:
            continue
        found.append(formula)
    return found


def significant(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant figures (answers are stated so)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def show_number(value: float) -> str:
    """A number as a quiz writes it: 3 significant figures, no trailing zeros."""
    value = significant(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.6g}"
