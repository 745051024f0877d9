"""The ``tutorlm`` command: one table from subcommand to the stage function it runs."""

from __future__ import annotations

import argparse
import sys

from tutorlm import __version__
from tutorlm.cli_flags import apply_online
from tutorlm.commands import Command
from tutorlm.data import commands as data_commands
from tutorlm.errors import TutorlmError
from tutorlm.evaluate import commands as eval_commands
from tutorlm.evaluate.judge_command import JUDGE
from tutorlm.model_commands import ASK, PREPARE
from tutorlm.pipeline import commands as pipeline_commands
from tutorlm.pipeline.sweep_commands import SWEEP
from tutorlm.quantize import commands as quantize_commands
from tutorlm.quiz import commands as quiz_commands
from tutorlm.rag import commands as rag_commands
from tutorlm.serve import commands as serve_commands
from tutorlm.train import commands as train_commands

COMMANDS: dict[str, Command] = {
    "run": pipeline_commands.RUN,
    "sweep": SWEEP,
    "model prepare": PREPARE,
    "model ask": ASK,
    "data validate": data_commands.VALIDATE,
    "data build": data_commands.BUILD,
    "index build": rag_commands.BUILD,
    "index search": rag_commands.SEARCH,
    "ask": rag_commands.ASK,
    "chat": serve_commands.CHAT,
    "serve": serve_commands.SERVE,
    "train sft": train_commands.SFT,
    "train dpo": train_commands.DPO,
    "eval": eval_commands.EVAL,
    "eval files": eval_commands.EVAL_FILES,
    "eval compare": eval_commands.EVAL_COMPARE,
    "eval rag": eval_commands.EVAL_RAG,
    "judge": JUDGE,
    "quantize": quantize_commands.QUANTIZE,
    "quantize compare": quantize_commands.COMPARE,
    "quiz build": quiz_commands.BUILD,
    "quiz take": quiz_commands.TAKE,
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items())
    return (
        f"tutorlm {__version__}: course material to a small, evaluated, served tutor model\n\n"
        f"usage: tutorlm COMMAND [ARGS...]   (tutorlm COMMAND --help for its arguments)\n\n"
        f"commands:\n{rows}\n"
    )


def _find(argv: list[str]) -> tuple[str, list[str]] | None:
    """The longest command name that prefixes ``argv``, and the arguments after it."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tutorlm`` console script and ``python -m tutorlm``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    found = _find(argv)
    if found is None:
        print(f"tutorlm: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    name, rest = found
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"tutorlm {name}", description=command.help)
    command.configure(parser)
    args = parser.parse_args(rest)
    apply_online(args)
    try:
        status = command.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (TutorlmError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
