"""``tutorlm eval``: a recipe's tasks, any files given directly, or a comparison of results.

tutorlm eval recipes/demo.yaml --model bundled:smollm2-135m-instruct [--tasks mmlu_stem,...]
tutorlm eval --model SPEC --mcqa FILE.jsonl --out DIR     (+ DIR/predictions.jsonl)
tutorlm eval --compare runs/demo/eval/m0 runs/demo/eval/m1 ...
tutorlm eval recipes/demo.yaml --model runs/demo/dpo/merged --rag runs/demo/rag/index
                                 (MCQA with and without retrieval, every k and chunk size)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tutorlm.commands import Command
from tutorlm.evaluate.config import TASKS


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "recipe", nargs="?", help="recipe YAML (omit with --mcqa/--prefs/... or --compare)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted recipe overrides, e.g. eval.shots=5",
    )
    parser.add_argument("--model", help="model spec: bundled name, directory or hub id")
    parser.add_argument("--tasks", help=f"comma-separated recipe tasks: {', '.join(TASKS)}")
    parser.add_argument(
        "--out", type=Path, help="output folder (default <run_dir>/eval/<model-name>)"
    )
    files = parser.add_argument_group("files given directly (no recipe)")
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
    settings = parser.add_argument_group("settings (override the recipe's eval section)")
    settings.add_argument("--method", choices=["letter", "choice"], help="MCQA scoring method")
    settings.add_argument("--shots", type=int, help="few-shot examples per MCQA question")
    settings.add_argument(
        "--chat", action="store_true", default=None, help="MCQA through the chat template"
    )
    settings.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    settings.add_argument("--batch-size", type=int)
    settings.add_argument("--limit", type=int, help="score only the first N items of each set")
    settings.add_argument("--beta", type=float, help="DPO beta of the reward")
    parser.add_argument(
        "--compare", type=Path, nargs="+", metavar="PATH", help="results.json files or folders"
    )
    parser.add_argument(
        "--rag",
        type=Path,
        metavar="DIR",
        help="retrieval ablation: MCQA (the recipe's notes questions, or --mcqa) with and "
        "without notes from the sources indexed in DIR, for each k and chunk size",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _setting_overrides(args: argparse.Namespace) -> dict:
    pairs = {
        "mcqa_method": args.method,
        "shots": args.shots,
        "chat": args.chat,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "max_questions": args.limit,
        "reward_beta": args.beta,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def _run(args: argparse.Namespace) -> int:
    from tutorlm.evaluate.scorer import ScorerError

    if args.compare:
        from tutorlm.evaluate.tables import compare_markdown, load_results

        table = compare_markdown([load_results(path) for path in args.compare])
        print(table, end="")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table)
        return 0
    if not args.model:
        raise ScorerError("--model is required (e.g. --model bundled:smollm2-135m-instruct)")
    direct = [args.mcqa, args.prefs, args.perplexity, args.choice, args.generation]

    def echo(line: str) -> None:
        print(line, flush=True)

    progress = not args.no_progress and sys.stderr.isatty()
    if args.rag:
        return _run_rag_ablation(args, echo)
    if args.recipe:
        if any(direct):
            raise ScorerError("give either a recipe or files (--mcqa, --prefs, ...), not both")
        from tutorlm.evaluate.runner import run_eval
        from tutorlm.recipe import load_recipe

        overrides = list(args.overrides) + [
            f"eval.{k}={v}" for k, v in _setting_overrides(args).items()
        ]
        recipe = load_recipe(args.recipe, overrides)
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        results = run_eval(
            recipe, args.model, tasks=tasks, out_dir=args.out, progress=progress, echo=echo
        )
    else:
        if not any(direct):
            raise ScorerError(
                "nothing to evaluate: give a recipe, or --mcqa/--prefs/--perplexity/--choice/--generation"
            )
        if not args.out:
            raise ScorerError("--out DIR is required when files are given directly")
        if args.prefs and not args.ref:
            raise ScorerError("--prefs needs --ref (the reference model of the implicit reward)")
        from tutorlm.evaluate.config import EvalConfig
        from tutorlm.evaluate.runner import evaluate_files

        results = evaluate_files(
            args.model,
            args.out,
            mcqa=args.mcqa,
            prefs=args.prefs,
            reference=args.ref,
            perplexity=args.perplexity or (),
            choice=args.choice,
            generation=args.generation,
            settings=EvalConfig(**_setting_overrides(args)),
            progress=progress,
            echo=echo,
        )
    where = Path(results["out_dir"])
    print(f"results: {where / 'results.json'}  table: {where / 'results.md'}")
    for reason in results["skipped"].values():
        print(f"not run: {reason}", file=sys.stderr)
    return 1 if results["skipped"] else 0


def _run_rag_ablation(args: argparse.Namespace, echo) -> int:
    """``--rag DIR``: the retrieval ablation on the sources of the index in DIR."""
    from tutorlm.evaluate.scorer import ScorerError
    from tutorlm.rag.ablation import index_sources, notes_questions, run_rag_ablation
    from tutorlm.rag.config import RagConfig

    others = [args.prefs, args.perplexity, args.choice, args.generation, args.tasks]
    if any(others):
        raise ScorerError("--rag scores MCQA only: drop --prefs/--perplexity/--choice/--tasks")
    sources, embedder = index_sources(args.rag)
    recipe = None
    if args.recipe:
        from tutorlm.recipe import load_recipe

        recipe = load_recipe(args.recipe, list(args.overrides))
    if args.mcqa:
        from tutorlm.data.formats import read_records

        records = read_records(args.mcqa, "mcqa", strict=True).records
    elif recipe is not None:
        records = notes_questions(recipe.run_dir / "data" / "mcqa.test.jsonl")
    else:
        raise ScorerError("--rag needs MCQA questions: a recipe (its notes questions) or --mcqa")
    if args.limit:
        records = records[: args.limit]
    if not records:
        raise ScorerError("--rag: no MCQA questions to score")
    out = args.out or (recipe.run_dir / "eval" / "rag" if recipe else None)
    if out is None:
        raise ScorerError("--out DIR is required without a recipe")
    settings = recipe.rag if recipe is not None else RagConfig()
    chat = args.chat if args.chat is not None else bool(recipe and recipe.eval.chat)
    table = run_rag_ablation(
        args.model,
        records,
        sources,
        ks=settings.ablation_ks,
        chunk_sizes=settings.ablation_chunk_tokens,
        out_dir=out,
        mode=settings.mode,
        budget_tokens=settings.budget_tokens,
        embedding_model=embedder,
        method=args.method or "choice",
        chat=chat,
        seed=recipe.seed if recipe is not None else 0,
        log=echo,
    )
    print(table.markdown(), end="")
    print(f"table: {table.files['markdown']}  plot: {table.files['plot']}")
    return 0


EVAL = Command(
    help="evaluate a model: MCQA, reward accuracy, BLEU/ROUGE, choice completion, perplexity",
    configure=_configure,
    run=_run,
)
