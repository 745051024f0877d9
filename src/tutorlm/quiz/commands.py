"""``tutorlm quiz build`` and ``tutorlm quiz take``.

tutorlm quiz build INDEX --out quiz.jsonl [--sections physics Waves ...] [--count N]
    questions from an index of the notes, checked; quiz.manifest.json next to it
tutorlm quiz build INDEX --out quiz.jsonl --model bundled:smollm2-135m-instruct
tutorlm quiz build INDEX --out quiz.jsonl --endpoint http://gpu:8000 --endpoint-model NAME
    the same, written by a model (the rule-based checks still apply)
tutorlm quiz take quiz.jsonl [--student NAME --results results.sqlite]
    one question at a time in the terminal; the score and the sections to re-read

A quiz is an MCQA file: `tutorlm eval files --model M --out DIR --mcqa quiz.jsonl`
scores a model on it, and `tutorlm eval rag --index INDEX --mcqa quiz.jsonl --model M
--out DIR` with and without retrieval (paired interval of the gain).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tutorlm.cli_flags import add_online_flag, apply_online
from tutorlm.commands import Command
from tutorlm.errors import TutorlmError


def _configure_build(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("index", type=Path, help="index directory (tutorlm index build)")
    parser.add_argument("--out", type=Path, required=True, help="quiz file to write (.jsonl)")
    parser.add_argument(
        "--sections", nargs="+", default=(), help="section titles or file stems (default: all)"
    )
    parser.add_argument("--count", type=int, help="most questions, spread over the sections")
    parser.add_argument("--seed", type=int, default=0, help="fixes questions and letters")
    parser.add_argument("--k", type=int, default=3, help="rank the passage must reach (3)")
    parser.add_argument(
        "--search-mode",
        choices=["hybrid", "bm25", "dense"],
        default="hybrid",
        help="search of the answerability check (default hybrid, as the tutor searches)",
    )
    writer = parser.add_argument_group("model-based writer (default: the rule-based one)")
    writer.add_argument("--model", help="model spec to write the questions")
    writer.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible server instead")
    writer.add_argument("--endpoint-model", help="model id on the endpoint")
    writer.add_argument("--api-key", help="API key of the endpoint")
    writer.add_argument("--max-passages", type=int, help="passages the model is asked about")
    add_online_flag(parser)


def _generator(args: argparse.Namespace):
    from tutorlm.quiz.model_gen import ModelGenerator, endpoint_completer, local_completer

    if args.endpoint:
        if not args.endpoint_model:
            raise TutorlmError("--endpoint needs --endpoint-model (the model id it serves)")
        complete = endpoint_completer(args.endpoint, args.endpoint_model, api_key=args.api_key)
        return ModelGenerator(complete, args.endpoint_model, args.max_passages)
    if args.model:
        complete = local_completer(args.model, online=args.online)
        return ModelGenerator(complete, args.model, args.max_passages)
    return None


def _run_build(args: argparse.Namespace) -> int:
    from tutorlm.quiz.build import build_quiz, manifest_path

    apply_online(args)
    if args.count is not None and args.count < 1:
        raise TutorlmError(f"--count must be at least 1, got {args.count}")
    build_quiz(
        args.index,
        args.out,
        generator=_generator(args),
        sections=args.sections,
        count=args.count,
        seed=args.seed,
        k=args.k,
        mode=args.search_mode,
    )
    print(f"manifest: {manifest_path(args.out)}")
    return 0


def _configure_take(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("quiz", type=Path, help="quiz file (tutorlm quiz build)")
    parser.add_argument("--sections", nargs="+", default=(), help="only these sections")
    parser.add_argument("--count", type=int, help="ask at most this many questions")
    parser.add_argument(
        "--shuffle", type=int, metavar="SEED", help="ask in a shuffled order (this seed)"
    )
    parser.add_argument("--student", help="save the result under this name")
    parser.add_argument(
        "--results", type=Path, help="local SQLite file of results (with --student)"
    )


def chosen_questions(questions, sections=(), count=None, shuffle=None):
    """The questions a taker asked for: of some sections, shuffled, at most ``count``."""
    if sections:
        wanted = [name.lower() for name in sections]
        questions = [
            q
            for q in questions
            if any(w in q.heading.lower() or w == q.subject.lower() for w in wanted)
        ]
    questions = list(questions)
    if shuffle is not None:
        random.Random(shuffle).shuffle(questions)
    return questions[:count] if count else questions


def _run_take(args: argparse.Namespace) -> int:
    from tutorlm.quiz.records import read_quiz
    from tutorlm.quiz.store import save_attempt
    from tutorlm.quiz.take import take_quiz

    if bool(args.student) != bool(args.results):
        raise TutorlmError("--student and --results go together (where, and under which name)")
    questions = chosen_questions(read_quiz(args.quiz), args.sections, args.count, args.shuffle)
    if not questions:
        raise TutorlmError(f"{args.quiz}: no question matches {list(args.sections)}")
    graded = take_quiz(questions)
    if args.results and graded:
        attempt = save_attempt(args.results, args.student, args.quiz.name, graded)
        print(f"saved as attempt {attempt} of {args.student} in {args.results}")
    return 0


BUILD = Command(
    "write a checked practice quiz from an index of the notes", _configure_build, _run_build
)
TAKE = Command("take a quiz in the terminal, graded, with sources", _configure_take, _run_take)
