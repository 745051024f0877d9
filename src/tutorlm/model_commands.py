"""``tutorlm model prepare`` and ``tutorlm model ask``."""

from __future__ import annotations

import argparse
import time

from tutorlm.cli_flags import add_online_flag
from tutorlm.commands import Command
from tutorlm.models import BUNDLED


def _configure_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", default=BUNDLED, help=f"model spec (default {BUNDLED})")
    add_online_flag(parser)


def _run_prepare(args: argparse.Namespace) -> int:
    from tutorlm.models import describe_model

    started = time.perf_counter()
    info = describe_model(args.spec, online=args.online)
    seconds = time.perf_counter() - started
    print(f"model       {info['spec']}")
    print(f"path        {info['path']}")
    print(f"class       {info['architecture']}")
    print(f"parameters  {info['parameters']:,} ({info['parameters'] / 1e6:.1f}M)")
    print(f"dtype       {info['dtype']}")
    print(f"chat        {'chat template present' if info['chat_template'] else 'no chat template'}")
    print(f"ready in    {seconds:.1f} s")
    return 0


def _configure_ask(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help=f"model spec, e.g. {BUNDLED}")
    parser.add_argument("question", help="the question to answer")
    parser.add_argument("--system", default=None, help="optional system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 means greedy decoding (default)"
    )
    add_online_flag(parser)


def _run_ask(args: argparse.Namespace) -> int:
    from tutorlm.generation import print_chat
    from tutorlm.models import load_model

    model, tokenizer = load_model(args.spec, online=args.online)
    messages = [{"role": "user", "content": args.question}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    print_chat(
        model, tokenizer, messages, max_new_tokens=args.max_new_tokens, temperature=args.temperature
    )
    return 0


PREPARE = Command(
    help="convert or check a model; print its size, dtype and chat template",
    configure=_configure_prepare,
    run=_run_prepare,
)
ASK = Command(
    help="answer one question through the model's chat template, streamed",
    configure=_configure_ask,
    run=_run_ask,
)
