"""``tutorlm chat`` and ``tutorlm serve``: settings from flags over a recipe over defaults."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tutorlm.cli_flags import add_config_flags, add_device_flag, add_online_flag, given, validated
from tutorlm.commands import Command
from tutorlm.errors import TutorlmError
from tutorlm.hardware import reserve_cores_for_engine
from tutorlm.layout import MODEL_LABELS, RunLayout
from tutorlm.models import BUNDLED
from tutorlm.rag.config import RagConfig
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.engines import ENGINES

API_KEY_ENV = "TUTORLM_API_KEY"

#: Flags whose short spelling reads better than ``--field-name`` (ServeConfig field ->
#: option strings); every other field is ``--field-name``.
_NAMES = {
    "served_name": ("--served-name", "--name"),
    "default_max_tokens": ("--max-tokens", "--default-max-tokens"),
    "request_timeout_s": ("--timeout", "--request-timeout-s"),
    "rag_k": ("--k", "--rag-k"),
    "rag_budget_tokens": ("--budget-tokens", "--rag-budget-tokens"),
}

#: The ServeConfig fields a terminal chat uses (serve takes them all).
_CHAT_FIELDS = (
    "served_name",
    "mode",
    "temperature",
    "default_max_tokens",
    "max_prompt_tokens",
    "rag_k",
    "rag_budget_tokens",
)


#: Directory names that say what a folder holds, not which model it is: a model in
#: one is named after the nearest folder above it with a name of its own.
GENERIC_DIR_NAMES = frozenset({"merged", "model", "models", "final", "output", "out", "latest"})


def served_name(spec: str) -> str:
    """The model id clients use when no ``served_name`` is set.

    A run's trained model (``runs/demo/dpo/merged``) is ``<run>-M2`` (``-M1`` for
    ``sft/merged``), its quantized copy (``runs/demo/quantize/models/int8-packed``)
    ``<run>-M2-int8-packed``; another directory is named by its own name, or by the nearest
    folder above it whose name is not generic (``exports/physics/merged`` is
    ``physics``); the bundled model by its name; a hub id is kept as it is. A GGUF
    file is named by :func:`gguf_served_name`.
    """
    if spec.startswith("bundled:"):
        return spec.partition(":")[2]
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    path = path.resolve()
    if path.suffix.lower() == ".gguf":
        return gguf_served_name(path)
    run = RunLayout(path.parent.parent)
    for label in MODEL_LABELS[1:]:
        if Path(run.model(label)) == path:
            return f"{run.run_dir.name}-{label}"
    quantized = RunLayout(path.parent.parent.parent)
    if path.parent == quantized.quantized_models and (path / "quantization.json").is_file():
        return f"{quantized.run_dir.name}-M2-{path.name}"  # the quantize stage's copy of M2
    named = next((p for p in (path, *path.parents) if p.name not in GENERIC_DIR_NAMES), path)
    return named.name or path.name


def gguf_served_name(path: Path) -> str:
    """A GGUF file's served name: its stem, with the quant type joined by ``-``.

    ``tutorlm quantize --gguf q8_0`` writes ``<model label>.q8_0.gguf``; in a run's
    ``quantize/models`` folder, the GGUF of the run's M2 (``dpo-merged.q8_0.gguf``) is
    ``<run>-M2-q8_0`` (``-M1-`` for ``sft-merged``); elsewhere ``physics.q4_0.gguf``
    is ``physics-q4_0`` and ``model.gguf`` is ``model``.
    """
    from tutorlm.quantize.commands import _model_label

    base, _, qtype = path.stem.rpartition(".")
    base, qtype = (base, f"-{qtype}") if base else (qtype, "")
    run = RunLayout(path.parent.parent.parent)
    if path.parent == run.quantized_models:
        for label in MODEL_LABELS[1:]:
            if base == _model_label(run.model(label)):
                return f"{run.run_dir.name}-{label}{qtype}"
    return f"{base}{qtype}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_tutor_arguments(parser: argparse.ArgumentParser, fields=None) -> None:
    """Arguments shared by chat and serve: the model, the notes, the backend, and the
    ``serve`` settings (``fields`` of them), generated from ``ServeConfig``.

    Settings left unset come from ``--recipe``'s ``serve`` and ``rag`` sections, or
    from their defaults.
    """
    parser.add_argument(
        "--model",
        default=None,
        help=f"model spec: a directory, {BUNDLED}, or a hub id (default: the recipe's "
        "trained model, else the bundled one)",
    )
    parser.add_argument(
        "--rag", metavar="DIR", default=None, help="index to cite (tutorlm index build)"
    )
    parser.add_argument(
        "--recipe",
        default=None,
        help="take settings (serve and rag sections), the model (M2, else M1, else the "
        "base) and the index from this recipe's run",
    )
    parser.add_argument(
        "--chat-template",
        default=None,
        help="zephyr, chatml or Jinja text (default: the model's own)",
    )
    parser.add_argument(
        "--backend",
        metavar="URL",
        default=None,
        help="generate on an OpenAI-compatible server (vLLM, llama-server, tutorlm) instead of "
        "here; --model then only supplies the tokenizer",
    )
    parser.add_argument(
        "--backend-model", default=None, help="model id on the backend (default: its first)"
    )
    parser.add_argument("--backend-api-key", default=None, help="API key of the backend")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="what generates: auto (a .gguf file: llama.cpp; a CUDA GPU with vLLM: vllm; "
        "else stepped where it supports the model, else transformers), or one of them "
        "(docs/serve.md, Engines)",
    )
    add_device_flag(parser)
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped with the model (off by default: only for models you trust)",
    )
    add_online_flag(parser)
    settings = parser.add_argument_group("settings (the serve and rag sections of a recipe)")
    add_config_flags(settings, ServeConfig, "serve", fields=fields, names=_NAMES)
    add_config_flags(
        settings, RagConfig, "rag", fields=("mode",), names={"mode": ("--search-mode",)}
    )


@dataclass
class Settings:
    """What chat and serve run with, once flags, recipe and defaults are merged."""

    config: ServeConfig
    model: str
    rag_dir: str | None
    search_mode: str
    k: int
    budget_tokens: int
    chat_template: str | None
    name: str
    """The served model's id (:func:`served_name`, or ``serve.served_name``)."""
    device: str = "auto"
    """``--device``, else the recipe's ``device``, else ``auto`` (``resolve_device``)."""


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Merge the flags over ``--recipe`` (its run's model and index included) over defaults.

    Raises:
        TutorlmError: a setting out of range, named by its field.
    """
    base, rag, model, rag_dir, template = ServeConfig(), RagConfig(), None, None, None
    device, run_name = "auto", None
    if args.recipe:
        from tutorlm.recipe import load_recipe

        recipe = load_recipe(args.recipe)
        base, rag, template = recipe.serve, recipe.rag, recipe.chat_template
        device = recipe.device
        model = recipe.layout.final_model()
        label = next(lb for lb in reversed(MODEL_LABELS) if recipe.layout.model(lb) == model)
        run_name = f"{recipe.name}-{label}"
        if (chosen := _run_choice(recipe.layout)) is not None:  # what `tutorlm run` printed
            model, run_name = chosen, served_name(chosen)
        index = recipe.layout.index
        rag_dir = str(index) if index.is_dir() else None
    overrides = given(args, "serve")
    if "max_tokens_limit" in overrides and "default_max_tokens" not in overrides:
        overrides["default_max_tokens"] = min(
            base.default_max_tokens, overrides["max_tokens_limit"]
        )
    config = validated(ServeConfig, {**base.model_dump(), **overrides}, "serve settings")
    served = args.model or model or BUNDLED
    return Settings(
        config=config,
        model=served,
        rag_dir=args.rag or rag_dir,
        search_mode=given(args, "rag").get("mode", rag.mode),
        k=config.rag_k or rag.k,
        budget_tokens=config.rag_budget_tokens or rag.budget_tokens,
        chat_template=args.chat_template or template,
        name=config.served_name or (run_name if not args.model else None) or served_name(served),
        device=getattr(args, "device", None) or device,
    )


def _run_choice(layout: RunLayout) -> str | None:
    """The model the run's report hands to chat and serve (``served.json``: its int8 copy
    when that met its accuracy target), when it is still there."""
    path = layout.served_choice()
    if not path.is_file():
        return None
    try:
        model = json.loads(path.read_text()).get("model")
    except (json.JSONDecodeError, AttributeError):
        return None
    return model if model and Path(model).exists() else None


def build_tutor(args: argparse.Namespace, settings: Settings):
    """The tutor the settings describe: the engine ``--engine`` picks (said on stderr,
    with why), the notes and the mode."""
    from tutorlm.serve.engines import open_engine
    from tutorlm.serve.tutor import Tutor

    config = settings.config
    engine, plan = open_engine(args, settings)
    print(f"engine: {plan.engine} ({plan.reason})", file=sys.stderr)
    index = None
    if settings.rag_dir:
        from tutorlm.rag import load_index

        index = load_index(settings.rag_dir)
    tutor = Tutor(
        engine,
        index=index,
        k=settings.k,
        search_mode=settings.search_mode,
        budget_tokens=settings.budget_tokens,
        mode=config.mode,
    )
    tutor.warm_up()
    return tutor


def _configure_chat(parser: argparse.ArgumentParser) -> None:
    _add_tutor_arguments(parser, fields=_CHAT_FIELDS)


def _run_chat(args: argparse.Namespace) -> int:
    reserve_cores_for_engine()  # before torch loads: see its docstring
    from tutorlm.serve.chat import ChatSession, run_chat
    from tutorlm.serve.engine import shutdown

    settings = resolve_settings(args)
    tutor = build_tutor(args, settings)
    session = ChatSession(
        tutor,
        mode=settings.config.mode,
        max_tokens=settings.config.default_max_tokens,
        temperature=settings.config.temperature,
        max_prompt_tokens=settings.config.max_prompt_tokens,
    )
    try:
        return run_chat(session)
    finally:
        shutdown(tutor.engine)


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    _add_tutor_arguments(parser)
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require this key on every route but /health (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--insecure-no-key",
        action="store_true",
        help="allow a non-loopback --host without an API key",
    )
    parser.add_argument(
        "--quiz", type=Path, help="serve this quiz (tutorlm quiz build) in the page's quiz tab"
    )
    parser.add_argument(
        "--quiz-results",
        type=Path,
        help="save finished quizzes per student in this local SQLite file (with --quiz)",
    )


def exposure_notes(host: str, port: int, api_key: str | None) -> list[str]:
    """What the server exposes, said at start-up: who can generate, and how loudly."""
    from tutorlm.serve.guard import allowed_host_names
    from tutorlm.serve.server import is_loopback

    if api_key:
        return [f"API key required on every route but /health (--host {host})"]
    if is_loopback(host):
        names = ", ".join(sorted(allowed_host_names(host, None)))
        return [
            f"no API key: every program and user on this machine can generate at "
            f"{host}:{port} (other sites' pages cannot: JSON only, Host must be {names})"
        ]
    return [
        "WARNING: " + line
        for line in (
            f"--insecure-no-key on --host {host}: ANYONE who can reach port {port} can use",
            "this server (the API and the page) and spend the model's compute. Set",
            "--api-key, or put an authenticating reverse proxy in front (docs/serve.md,",
            "Security).",
        )
    ]


def _run_serve(args: argparse.Namespace) -> int:
    reserve_cores_for_engine()  # before torch loads: see its docstring
    from tutorlm.serve.api import create_app
    from tutorlm.serve.engine import shutdown
    from tutorlm.serve.server import is_loopback, run_server

    settings = resolve_settings(args)
    config = settings.config
    if not is_loopback(config.host) and not args.api_key and not args.insecure_no_key:
        raise TutorlmError(
            f"--host {config.host} accepts connections from other machines: set --api-key KEY "
            f"(or ${API_KEY_ENV}), or pass --insecure-no-key if that is really meant"
        )
    if args.quiz_results and not args.quiz:
        raise TutorlmError("--quiz-results needs --quiz (the quiz whose results it keeps)")
    questions = None
    if args.quiz:
        from tutorlm.quiz.records import read_quiz

        questions = read_quiz(args.quiz)
    tutor = build_tutor(args, settings)
    app = create_app(tutor, config, api_key=args.api_key)
    if questions is not None:
        from tutorlm.serve.routes import attach_quiz

        attach_quiz(app, questions, args.quiz.name, args.quiz_results)
        saving = f", results saved in {args.quiz_results}" if args.quiz_results else ""
        print(f"quiz tab: {len(questions)} questions from {args.quiz}{saving}", file=sys.stderr)
    where = f"http://{config.host}:{config.port}"
    notes = (
        f", notes {settings.rag_dir} ({len(tutor.index)} chunks)" if tutor.index is not None else ""
    )
    print(f"tutorlm serving {tutor.name!r}{notes}: page {where}/, API {where}/v1", file=sys.stderr)
    for line in exposure_notes(config.host, config.port, args.api_key):
        print(line, file=sys.stderr)
    try:
        run_server(app, config.host, config.port)
    finally:
        shutdown(tutor.engine)
    return 0


CHAT = Command(
    "chat with the tutor in the terminal, streamed, citing notes with --rag",
    _configure_chat,
    _run_chat,
)
SERVE = Command(
    "serve the tutor: OpenAI-compatible API, streaming, and a chat page",
    _configure_serve,
    _run_serve,
)
