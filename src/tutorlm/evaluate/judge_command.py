"""``tutorlm judge A.jsonl B.jsonl``: which set of replies a judge model prefers.

tutorlm judge runs/a/eval/m2/predictions.tutor-grounded.jsonl \\
    runs/a/eval/m0/predictions.tutor-grounded.jsonl \\
    --judge-url http://gpu-box:8000 --judge-model Qwen/Qwen2.5-72B-Instruct --out runs/a/judge
    win rate of the first set over the second, both orders asked, and the judge's
    agreement with the files' verdicts (docs/judge.md)

Without --judge-url the judge model is a local spec (in a pinch: small and slow).
Flags other than the files and --out come from the typed judge config (eval.judge).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tutorlm.cli_flags import add_config_flags
from tutorlm.commands import Command
from tutorlm.evaluate.judge import JudgeConfig

_NAMES = {
    "url": ("--judge-url",),
    "model": ("--judge-model",),
    "api_key_env": ("--api-key-env",),
}


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("file_a", type=Path, help="replies of set A (JSONL with id and reply)")
    parser.add_argument("file_b", type=Path, help="replies of set B, matched to A by id")
    parser.add_argument(
        "--out", type=Path, default=Path("judge"), help="output folder (default ./judge)"
    )
    parser.add_argument(
        "--labels", nargs=2, metavar=("A", "B"), help="names of the two sets in the report"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples (default 1000; 0: none)"
    )
    add_config_flags(
        parser.add_argument_group("the judge (eval.judge)"), JudgeConfig, "judge", names=_NAMES
    )


def _run(args: argparse.Namespace) -> int:
    from tutorlm.cli_flags import given, validated
    from tutorlm.errors import TutorlmError
    from tutorlm.evaluate.judge_files import judge_files

    config = validated(JudgeConfig, given(args, "judge"), "judge settings")
    if not config.url and not config.model:
        raise TutorlmError(
            "give --judge-url (an OpenAI-compatible endpoint) or --judge-model (a local spec)"
        )
    result = judge_files(
        args.file_a,
        args.file_b,
        config,
        args.out,
        labels=tuple(args.labels) if args.labels else None,
        resamples=args.resamples,
        seed=args.seed,
        echo=lambda line: print(line, flush=True),
    )
    print(Path(result["files"]["markdown"]).read_text(encoding="utf-8"), end="")
    print(f"pairs: {result['files']['pairs']}  record: {result['files']['json']}")
    return 0


JUDGE = Command(
    "pairwise judgement of two reply sets by a judge model (both orders, win rate, agreement)",
    _configure,
    _run,
)
