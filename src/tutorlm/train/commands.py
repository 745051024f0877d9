"""``tutorlm train sft`` and ``tutorlm train dpo``.

Both run unchanged under ``accelerate launch`` (several processes, FSDP or
DeepSpeed configs): the stage functions use accelerate's process state, and
only the main process writes the merged model and the summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tutorlm.commands import Command, add_recipe_arguments


def _configure(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint of this stage instead of starting over",
    )


def _log_to_stderr() -> None:
    """tutorlm's own progress lines (and the bad-row warning) on stderr, once."""
    logger = logging.getLogger("tutorlm")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("tutorlm: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _report(result, model_name: str) -> None:
    summary = result.summary
    if not summary:  # not the main process
        return
    loss = summary.get("train_loss")
    runtime = summary.get("train_runtime")
    print(
        f"{model_name}: {result.merged_dir}  "
        f"(step {result.global_step}"
        + (f", mean train loss {loss:.4f}" if loss is not None else "")
        + (f", {runtime:.0f} s" if runtime is not None else "")
        + f"; metrics in {result.metrics_file})"
    )


def _run(stage: str, label: str):
    """The command's function for one stage: run it on the recipe, report the model."""

    def run(args: argparse.Namespace) -> int:
        from tutorlm.models import apply_offline_env
        from tutorlm.recipe import load_recipe

        apply_offline_env()
        _log_to_stderr()
        from tutorlm.train.runner import run_stage
        from tutorlm.train.runtime import require_bitsandbytes

        recipe = load_recipe(args.recipe, args.overrides)
        require_bitsandbytes(recipe, [stage])
        result = run_stage(_spec(stage), recipe, resume=args.resume)
        _report(result, label)
        return 0

    return run


def _spec(stage: str):
    if stage == "sft":
        from tutorlm.train.sft import SFT as spec
    else:
        from tutorlm.train.dpo import DPO as spec
    return spec


SFT = Command(
    help="LoRA SFT of the recipe's model on its SFT records -> M1 (<run_dir>/sft/merged)",
    configure=_configure,
    run=_run("sft", "M1"),
)
DPO = Command(
    help="DPO / cDPO / IPO on preference pairs from M1 (or M0) -> M2 (<run_dir>/dpo/merged)",
    configure=_configure,
    run=_run("dpo", "M2"),
)
