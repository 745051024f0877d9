"""The shape of one CLI subcommand; each stage defines its own in ``<stage>/commands.py``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from tutorlm.cli_flags import add_online_flag


@dataclass(frozen=True)
class Command:
    """One subcommand: a one-line help, its arguments, and the function it runs.

    ``run`` returns the process exit status (``None`` means 0). Heavy imports
    (torch, transformers) belong inside ``run`` so that ``--help`` stays instant.
    """

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe file, its ``key=value`` overrides and ``--online`` (a recipe's model or
    data may be a hub id), shared by recipe-driven commands."""
    add_online_flag(parser)
    parser.add_argument("recipe", help="recipe YAML file, e.g. recipes/demo.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides of recipe values, e.g. train.learning_rate=1e-4",
    )
