"""CLI commands of the retrieval stage: ``index build``, ``index search`` and ``ask``."""

from __future__ import annotations

import argparse
import textwrap

from tutorlm.cli_flags import add_config_flags, add_online_flag, apply_online, given, validated
from tutorlm.commands import Command
from tutorlm.models import BUNDLED
from tutorlm.rag.config import IndexSettings, RagConfig


def _settings(args: argparse.Namespace) -> RagConfig:
    """The ``rag`` settings given as flags over their defaults (and ``--online``)."""
    apply_online(args)
    return validated(RagConfig, given(args, "rag"), "rag settings")


def _configure_build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        help="Markdown, text or PDF files and folders; 'bundled:notes' is the demo notes",
    )
    parser.add_argument("--out", required=True, help="index directory (created or updated)")
    add_config_flags(parser, IndexSettings, "rag")
    add_online_flag(parser)


def _run_build(args: argparse.Namespace) -> int:
    from tutorlm.rag.index import build_index

    settings = validated(IndexSettings, given(args, "rag"), "index settings")
    apply_online(args)
    report = build_index(args.sources, args.out, settings=settings, log=print, progress=True)
    if report.full_rebuild and report.full_rebuild != "no previous index":
        print(f"full rebuild: {report.full_rebuild}")
    for label, names in (
        ("added", report.added),
        ("changed", report.changed),
        ("removed", report.removed),
    ):
        for name in names:
            print(f"  {label:<9} {name}")
    for name, reason in report.skipped:
        print(f"  skipped   {name}: {reason}")
    print(
        f"{report.out_dir}: {report.n_chunks} chunks from "
        f"{len(report.added) + len(report.changed) + len(report.unchanged)} files "
        f"({len(report.unchanged)} unchanged, {report.embedded_chunks} chunks embedded, "
        f"{len(report.skipped)} skipped) in {report.seconds:.2f} s"
    )
    return 0


def _add_search_arguments(parser: argparse.ArgumentParser, *fields: str) -> None:
    add_config_flags(parser, RagConfig, "rag", fields=("k", "mode", *fields))
    add_online_flag(parser)


def _configure_search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index directory written by `tutorlm index build`")
    parser.add_argument("query", help="what to look for")
    _add_search_arguments(parser)


def _excerpt(text: str, width: int = 300) -> str:
    flat = " ".join(text.split())
    return textwrap.shorten(flat, width=width, placeholder=" …")


def _run_search(args: argparse.Namespace) -> int:
    from tutorlm.rag.retrieve import load_index

    settings = _settings(args)
    index = load_index(args.index)
    hits = index.search(args.query, k=settings.k, mode=settings.mode)
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank}. {hit.score:.4f}  {hit.chunk.location()}  ({hit.chunk.id})")
        print(textwrap.indent(textwrap.fill(_excerpt(hit.chunk.text), 96), "     "))
    return 0


def _configure_ask(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the question to answer")
    parser.add_argument("--rag", required=True, metavar="DIR", help="index directory to cite")
    parser.add_argument(
        "--model", default=BUNDLED, help=f"generator model spec (default {BUNDLED})"
    )
    _add_search_arguments(parser, "budget_tokens")
    parser.add_argument(
        "--system", default=None, help="system prompt to use instead of the default"
    )
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    parser.add_argument("--show-prompt", action="store_true", help="print the prompt first")


def _run_ask(args: argparse.Namespace) -> int:
    from tutorlm.generation import print_chat
    from tutorlm.models import load_model
    from tutorlm.rag.prompt import build_rag_messages, cited_sources
    from tutorlm.rag.retrieve import load_index

    settings = _settings(args)
    index = load_index(args.rag)
    hits = index.search(args.question, k=settings.k, mode=settings.mode)
    model, tokenizer = load_model(args.model, online=args.online)
    messages, sources = build_rag_messages(
        args.question, hits, tokenizer, budget_tokens=settings.budget_tokens, system=args.system
    )
    if args.show_prompt:
        for message in messages:
            print(f"--- {message['role']}\n{message['content']}")
        print("--- assistant")
    answer = print_chat(
        model, tokenizer, messages, max_new_tokens=args.max_new_tokens, temperature=args.temperature
    )
    cited = cited_sources(answer, sources)
    if cited:
        print("\nSources cited:")
        shown = cited
    else:
        print("\nThe answer cites none of the notes; the notes it was given:")
        shown = list(enumerate(sources, start=1))
    for number, hit in shown:
        print(f"[{number}] {hit.chunk.location()}")
        print(textwrap.indent(textwrap.fill(_excerpt(hit.chunk.text), 96), "    "))
    return 0


BUILD = Command(
    "index Markdown, text and PDF files for retrieval (incremental)", _configure_build, _run_build
)
SEARCH = Command(
    "show the chunks an index retrieves for a query, with scores", _configure_search, _run_search
)
ASK = Command(
    "answer a question from retrieved course notes, citing them", _configure_ask, _run_ask
)
