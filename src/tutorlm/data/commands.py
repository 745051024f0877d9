"""CLI commands of the data stage."""

from __future__ import annotations

import argparse

from tutorlm.commands import Command, add_recipe_arguments
from tutorlm.data.formats import RECORD_TYPES


def _configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a JSONL file of records")
    parser.add_argument("--kind", required=True, choices=sorted(RECORD_TYPES))
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad row (default: count them all)"
    )


def _run_validate(args: argparse.Namespace) -> int:
    """Exit 1 on any bad row, an empty file, or a file that is not UTF-8 JSON Lines."""
    from tutorlm.data.formats import read_records

    result = read_records(args.file, args.kind, strict=args.strict)
    if not result.records and not result.n_bad:
        print(f"{args.file}: no {args.kind} records (the file is empty)")
        return 1
    print(f"{args.file}: {len(result.records)} good {args.kind} records, {result.n_bad} bad")
    for reason, count in result.bad.most_common():
        print(f"  {count:>6}  {reason}")
    for error in result.errors[:10]:
        print(f"  e.g. {error}")
    return 1 if result.n_bad else 0


VALIDATE = Command(
    help="check a JSONL file of records: counts, and bad rows by reason",
    configure=_configure_validate,
    run=_run_validate,
)


def _configure_build(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_build(args: argparse.Namespace) -> int:
    from tutorlm.data.build import build_data
    from tutorlm.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    build_data(recipe, force=args.force, progress=not args.no_progress)
    return 0


BUILD = Command(
    help="build the SFT, preference and MCQA files of a recipe's data section",
    configure=_configure_build,
    run=_run_build,
)
