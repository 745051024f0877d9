"""``tutorlm eval``: one command per purpose, settings flags generated from ``EvalConfig``.

tutorlm eval RECIPE [key=value ...] [--model SPEC] [--tasks mmlu_stem,...]
    a recipe's tasks, on its run's data (default model: the run's M2, else M1, else M0)
tutorlm eval files --model SPEC --out DIR --mcqa FILE.jsonl [--prefs FILE --ref SPEC] ...
    files given directly, no recipe (MCQA predictions in DIR/predictions.jsonl)
tutorlm eval compare runs/demo/eval/m0 runs/demo/eval/m1 ... [--out FILE.md]
    results side by side: models in rows, metrics in columns
tutorlm eval rag [RECIPE] --index runs/demo/rag/index [--model SPEC] [--mcqa FILE]
    MCQA with and without notes from the index's sources, for each k and chunk size

On several GPUs: `accelerate launch --multi_gpu --num_processes N -m tutorlm eval ...`
(each process scores a share, one writes); one model larger than a GPU: --device-map auto.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tutorlm.cli_flags import (
    add_config_flags,
    add_device_flag,
    add_online_flag,
    apply_online,
    device_overrides,
    overrides,
)
from tutorlm.commands import Command
from tutorlm.errors import TutorlmError
from tutorlm.evaluate.config import EvalConfig
from tutorlm.rag.config import RagConfig

#: Short spellings kept from before the flags were generated.
_NAMES = {
    "mcqa_method": ("--method", "--mcqa-method"),
    "max_questions": ("--limit", "--max-questions"),
    "reward_beta": ("--beta", "--reward-beta"),
}

#: ``EvalConfig`` fields that name input files: ``eval files`` takes those as its own flags.
_FILE_FIELDS = ("tasks", "perplexity_files", "reward_reference", "generation_file", "choice_file")


def _echo(line: str) -> None:
    print(line, flush=True)


def _add_model_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    default = "" if required else " (default: the recipe's M2, else M1, else its base model)"
    parser.add_argument(
        "--model",
        required=required,
        help="model spec: bundled name, directory or hub id, or a model the project wrote: "
        "a quantize copy (runs/demo/quantize/models/int8-packed, CPU), a LoRA adapter "
        f"folder, a .gguf file (dequantized to float){default}",
    )
    add_device_flag(parser)
    add_online_flag(parser)


def _add_recipe(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    parser.add_argument("recipe", nargs="?" if optional else None, help="recipe YAML file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted recipe overrides, e.g. seed=1"
    )


def _settings_group(parser: argparse.ArgumentParser, *, exclude=()) -> None:
    group = parser.add_argument_group("settings (the eval section of a recipe)")
    exclude = (*exclude, "judge")  # a block of its own: `tutorlm judge`, or eval.judge=...
    add_config_flags(group, EvalConfig, "eval", names=_NAMES, exclude=exclude)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _report(results: dict) -> int:
    """Where the results are (printed by the main process only, under ``accelerate
    launch``); the exit status, the same on every process."""
    from tutorlm.hardware import launched_processes

    if launched_processes()[1] == 0:
        where = Path(results["out_dir"])
        print(f"results: {where / 'results.json'}  table: {where / 'results.md'}")
        for reason in results["skipped"].values():
            print(f"not run: {reason}", file=sys.stderr)
    return 1 if results["skipped"] else 0


# -- tutorlm eval RECIPE ---------------------------------------------------------------


def _configure_recipe(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    _add_recipe(parser)
    _add_model_flags(parser, required=False)
    parser.add_argument("--out", type=Path, help="output folder (default <run>/eval/<model>)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _settings_group(parser)


def _run_recipe(args: argparse.Namespace) -> int:
    from tutorlm.evaluate.runner import run_eval
    from tutorlm.recipe import load_recipe

    apply_online(args)
    changes = [*args.overrides, *overrides(args, "eval"), *device_overrides(args)]
    recipe = load_recipe(args.recipe, changes)
    model = args.model or recipe.layout.final_model()
    results = run_eval(recipe, model, out_dir=args.out, progress=_progress(args), echo=_echo)
    return _report(results)


# -- tutorlm eval files ------------------------------------------------------------------


def _configure_files(parser: argparse.ArgumentParser) -> None:
    _add_model_flags(parser, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    files = parser.add_argument_group("files (one or more)")
    files.add_argument(
        "--mcqa", type=Path, help="MCQA JSONL to score; predictions go to OUT/predictions.jsonl"
    )
    files.add_argument(
        "--prefs", type=Path, help="preference JSONL for reward accuracy (needs --ref)"
    )
    files.add_argument("--ref", help="reference model of the reward")
    files.add_argument(
        "--perplexity", type=Path, nargs="+", help="text files or folders for perplexity"
    )
    files.add_argument("--choice", type=Path, help="JSONL of {context, endings, label} items")
    files.add_argument(
        "--generation", type=Path, help="SFT JSONL whose last assistant turns are references"
    )
    _settings_group(parser, exclude=_FILE_FIELDS)


def _run_files(args: argparse.Namespace) -> int:
    from tutorlm.cli_flags import given, validated
    from tutorlm.evaluate.runner import evaluate_files

    if not any([args.mcqa, args.prefs, args.perplexity, args.choice, args.generation]):
        raise TutorlmError(
            "nothing to evaluate: give --mcqa, --prefs, --perplexity, --choice or --generation"
        )
    if args.prefs and not args.ref:
        raise TutorlmError("--prefs needs --ref (the reference model of the implicit reward)")
    apply_online(args)
    results = evaluate_files(
        args.model,
        args.out,
        mcqa=args.mcqa,
        prefs=args.prefs,
        reference=args.ref,
        perplexity=args.perplexity or (),
        choice=args.choice,
        generation=args.generation,
        settings=validated(EvalConfig, given(args, "eval"), "eval settings"),
        device=args.device or "auto",
        progress=_progress(args),
        echo=_echo,
    )
    return _report(results)


# -- tutorlm eval compare ----------------------------------------------------------------


def _configure_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", type=Path, nargs="+", help="results.json files or folders")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")


def _run_compare(args: argparse.Namespace) -> int:
    from tutorlm.evaluate.tables import compare_markdown, load_results

    table = compare_markdown([load_results(path) for path in args.paths])
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


# -- tutorlm eval rag --------------------------------------------------------------------


def _configure_rag(parser: argparse.ArgumentParser) -> None:
    from tutorlm.evaluate.ablation import ABLATION_METHOD

    _add_recipe(parser, optional=True)
    parser.add_argument(
        "--model",
        action="append",
        help="model to ask: M0, M1, M2 (the recipe's run) or a spec; repeat for one block "
        "each (default: rag.ablation_models, else the run's final model)",
    )
    add_device_flag(parser)
    add_online_flag(parser)
    parser.add_argument(
        "--index",
        "--rag",
        type=Path,
        metavar="DIR",
        required=True,
        help="index whose sources (and embedding model) the ablation indexes again",
    )
    parser.add_argument(
        "--mcqa", type=Path, help="MCQA JSONL to ask (default: the recipe's notes questions)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default <run>/eval/rag)")
    parser.add_argument(
        "--method",
        choices=["letter", "choice"],
        default=ABLATION_METHOD,
        help=f"MCQA scoring (default {ABLATION_METHOD}: letters barely move with context)",
    )
    group = parser.add_argument_group("settings (the rag and eval sections of a recipe)")
    fields = ("ablation_ks", "ablation_chunk_tokens", "mode", "budget_tokens")
    add_config_flags(group, RagConfig, "rag", fields=fields)
    fields = ("chat", "dtype", "batch_size", "max_questions", "bootstrap_resamples")
    add_config_flags(group, EvalConfig, "eval", fields=fields, names=_NAMES)


def _run_rag(args: argparse.Namespace) -> int:
    from tutorlm.evaluate.ablation import index_sources
    from tutorlm.evaluate.ablations import run_recipe_ablations
    from tutorlm.recipe import load_recipe, recipe_from_dict

    sources, embedder = index_sources(args.index)
    changes = [*args.overrides, *overrides(args, "eval"), *overrides(args, "rag")]
    changes += device_overrides(args)
    if args.recipe:
        recipe = load_recipe(args.recipe, changes)
    else:
        recipe = recipe_from_dict({"name": "eval-rag"}, changes, origin="eval rag flags")
    questions = None  # the recipe's rag.ablation_questions
    if args.mcqa:
        from tutorlm.data.formats import read_records

        records = read_records(args.mcqa, "mcqa", strict=True).records
        questions = {args.mcqa.stem: records[: recipe.eval.max_questions]}
    elif not args.recipe:
        raise TutorlmError(
            "eval rag needs MCQA questions: a recipe (its notes questions) or --mcqa"
        )
    if args.out is None and not args.recipe:
        raise TutorlmError("--out DIR is required without a recipe")
    if args.model is None and not args.recipe:
        raise TutorlmError("--model is required without a recipe")
    apply_online(args)
    result = run_recipe_ablations(
        recipe,
        args.out or recipe.layout.eval_dir("rag"),
        models=args.model,
        questions=questions,
        sources=sources,
        embedding_model=embedder,
        method=args.method,
        log=_echo,
    )
    if not result.blocks:
        reasons = "; ".join(f"{what}: {why}" for what, why in result.skipped.items())
        raise TutorlmError(f"eval rag: no MCQA questions to score ({reasons or 'none given'})")
    print(result.markdown(), end="")
    print(f"table: {result.files['markdown']}  plot: {result.files['plot']}")
    return 0


EVAL = Command(
    "evaluate a model on a recipe's tasks: MCQA, reward accuracy, BLEU/ROUGE, perplexity",
    _configure_recipe,
    _run_recipe,
)
EVAL_FILES = Command(
    "evaluate a model on files given directly (MCQA, preferences, text, choices)",
    _configure_files,
    _run_files,
)
EVAL_COMPARE = Command(
    "compare results.json files: models in rows, metrics in columns",
    _configure_compare,
    _run_compare,
)
EVAL_RAG = Command(
    "the retrieval ablation: MCQA with and without notes, for each k and chunk size",
    _configure_rag,
    _run_rag,
)
