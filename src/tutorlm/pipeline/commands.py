"""``tutorlm run``: a recipe from data to a served tutor, with a report."""

from __future__ import annotations

import argparse

from tutorlm.commands import Command, add_recipe_arguments


def _configure_run(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--from", dest="start", metavar="STAGE", help="re-run from this stage on")
    parser.add_argument("--only", metavar="STAGE", help="run just this stage")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="shrunk offline run: tiny model of the same family, fixture rows, two steps",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print each stage's rows, steps, device, dtype and estimated GPU memory; run nothing",
    )


def _run_run(args: argparse.Namespace) -> int:
    from tutorlm.layout import tutor_commands
    from tutorlm.pipeline.runner import run_pipeline
    from tutorlm.pipeline.stages import pipeline_stages
    from tutorlm.recipe import load_recipe, save_resolved

    recipe = load_recipe(args.recipe, args.overrides, smoke=args.smoke)
    if args.dry_run:
        from tutorlm.pipeline.plan import plan_lines

        print(f"dry run of {recipe.name} (nothing is downloaded, built or written)")
        print("\n".join(plan_lines(recipe.to_dict())))
        return 0
    save_resolved(recipe)
    print(f"run {recipe.name}: {recipe.run_dir}/")
    run_pipeline(recipe, pipeline_stages(), start=args.start, only=args.only)
    report = recipe.layout.report_html
    if report.is_file():
        from tutorlm.pipeline.targets import served_model

        model, why = served_model(recipe)
        commands = tutor_commands(model, recipe.layout.index)
        print(f"\nreport: {report.resolve()}")
        print(f"chat with the tutor ({why}): {commands['chat']}")
    return 0


RUN = Command(
    help="run a recipe end to end: data, SFT, DPO, eval, quantize, RAG, report",
    configure=_configure_run,
    run=_run_run,
)
