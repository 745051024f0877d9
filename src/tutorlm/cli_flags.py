"""Command-line flags generated from the typed config sections.

Each field of a section (``EvalConfig``, ``ServeConfig``, ``RagConfig`` ...) becomes
``--field-name``, typed from its annotation, with the field's docstring as help and
its default in it, so that a new setting is a flag with no second copy to keep in
step (litgpt generates its flags from signatures the same way). A flag left out is
``None``: the recipe's value, else the field's default, stands.

    add_config_flags(parser, EvalConfig, "eval", names={"mcqa_method": ("--method",)})
    args = parser.parse_args(["--method", "choice", "--batch-size", "4"])
    given(args, "eval")            # {"mcqa_method": "choice", "batch_size": 4}
    overrides(args, "eval")        # ['eval.mcqa_method="choice"', 'eval.batch_size=4']
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import os
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from tutorlm.errors import TutorlmError

#: Separates the section from the field in an option's ``dest`` (``eval:batch_size``).
_SEP = ":"


@functools.cache
def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """The docstring under each field of ``model`` and its bases, read from the source."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _members(annotation) -> tuple:
    """The members of ``X | Y`` / ``Optional[X]``, ``None`` left out."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _literal_values(annotation) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _converter(annotation) -> Callable[[str], Any]:
    """A function from the flag's text to the field's value (pydantic checks ranges)."""
    members = _members(annotation)
    if len(members) > 1:
        converters = [_converter(member) for member in members]

        def first_that_fits(text: str):
            for convert in converters:
                try:
                    return convert(text)
                except (ValueError, argparse.ArgumentTypeError):
                    continue
            raise argparse.ArgumentTypeError(f"invalid value {text!r}")

        return first_that_fits
    (annotation,) = members
    literal = _literal_values(annotation)
    if literal:

        def one_of(text: str):
            if text not in map(str, literal):
                raise argparse.ArgumentTypeError(f"choose from {', '.join(map(str, literal))}")
            return next(value for value in literal if str(value) == text)

        return one_of
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (str,)
        convert = _converter(typing.get_args(item)[0] if hasattr(item, "__metadata__") else item)
        return lambda text: [convert(part.strip()) for part in text.split(",") if part.strip()]
    if hasattr(annotation, "__metadata__"):  # Annotated[int, Field(ge=1)]
        return _converter(typing.get_args(annotation)[0])
    return annotation if annotation in (int, float, str) else str


def _metavar(annotation) -> str:
    members = _members(annotation)
    if len(members) == 1 and typing.get_origin(members[0]) is list:
        return "A,B,..."
    return {int: "N", float: "X"}.get(members[0], "VALUE") if len(members) == 1 else "VALUE"


def _help(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    text = field_docs(model).get(name, "")
    text = re.sub(r"``([^`]*)``", r"\1", text)
    default = info.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = ",".join(map(str, default))
    shown = f"(default {default})" if default not in (None, "") else "(default: none)"
    return f"{text} {shown}".strip().replace("%", "%%")


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    section: str,
    *,
    fields: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    names: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Add one option per field of ``model``: ``--field-name``, or the ``names`` given.

    Booleans get ``--x / --no-x``; ``Literal`` fields their choices; lists take
    comma-separated values (``--tasks mmlu_stem,mcqa_test``). Every option defaults
    to ``None`` so that :func:`given` returns only what was typed.

    Args:
        parser: the parser or argument group to add to.
        model: the config section's pydantic model.
        section: its key in a recipe (``eval``), which also names the options' dests.
        fields: only these fields, in this order (default: all).
        exclude: fields to leave out.
        names: a field's option strings instead of ``--field-name``, where a short or
            established spelling reads better (``{"mcqa_method": ("--method",)}``).
    """
    names = names or {}
    chosen = [n for n in (fields or model.model_fields) if n not in set(exclude)]
    for name in chosen:
        annotation = model.model_fields[name].annotation
        options = names.get(name, (f"--{name.replace('_', '-')}",))
        kwargs: dict[str, Any] = {"dest": f"{section}{_SEP}{name}", "default": None}
        members = _members(annotation)
        literal = _literal_values(members[0]) if len(members) == 1 else ()
        if members == (bool,):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif literal:
            kwargs["choices"] = list(literal)
        else:
            kwargs["type"] = _converter(annotation)
            kwargs["metavar"] = _metavar(annotation)
        parser.add_argument(*options, help=_help(model, name), **kwargs)


def given(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The fields of ``section`` set on the command line, by field name."""
    prefix = f"{section}{_SEP}"
    return {
        key.removeprefix(prefix): value
        for key, value in vars(args).items()
        if key.startswith(prefix) and value is not None
    }


def overrides(args: argparse.Namespace, section: str) -> list[str]:
    """The flags of ``section`` as recipe overrides (``eval.shots=5``), values as JSON."""
    return [f"{section}.{key}={json.dumps(value)}" for key, value in given(args, section).items()]


def validated(model: type[BaseModel], values: Mapping[str, Any], what: str):
    """``model(**values)``, a bad value named by its field in a :class:`TutorlmError`."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as error:
        problems = "; ".join(
            ".".join(map(str, e["loc"]))
            + ": " * bool(e["loc"])
            + e["msg"].removeprefix("Value error, ")
            for e in error.errors()
        )
        raise TutorlmError(f"bad {what}: {problems}") from None


def add_online_flag(parser: argparse.ArgumentParser) -> None:
    """``--online``: allow model hub downloads (off unless asked, or ``TUTORLM_ONLINE=1``)."""
    parser.add_argument(
        "--online",
        action="store_true",
        default=None,
        help="allow model hub downloads (default: offline unless TUTORLM_ONLINE=1)",
    )


def apply_online(args: argparse.Namespace) -> None:
    """Make ``--online`` hold for every model this process loads (``tutorlm.models``
    reads ``TUTORLM_ONLINE``), also where a stage loads models without asking."""
    if getattr(args, "online", None):
        os.environ["TUTORLM_ONLINE"] = "1"


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device``: the recipe's top-level ``device`` for this command (``None``: the
    recipe's value, else ``auto``)."""
    parser.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="auto (the GPU when there is one; default), cpu, cuda or cuda:N",
    )


def device_overrides(args: argparse.Namespace) -> list[str]:
    """``['device="cuda:0"']`` when ``--device`` was given, else ``[]``."""
    device = getattr(args, "device", None)
    return [f"device={json.dumps(device)}"] if device is not None else []
