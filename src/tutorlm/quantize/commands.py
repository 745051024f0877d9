"""``tutorlm quantize`` and ``tutorlm quantize compare``.

tutorlm quantize [RECIPE] --model SPEC --method int8-packed [--method ...] [--out DIR]
tutorlm quantize --model SPEC --gguf q8_0 [--out DIR]      (a GGUF file for llama.cpp / Ollama)
tutorlm quantize compare [RECIPE] [key=value ...] [--model SPEC] [--out DIR] [--methods a,b]

Without a recipe, defaults apply: every CPU method, perplexity on the bundled
course notes, MCQA on a seeded MMLU STEM sample, reward only with ``--prefs``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tutorlm.cli_flags import add_device_flag, add_online_flag
from tutorlm.commands import Command


def _add_recipe(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("recipe", nargs="?", help="recipe YAML (optional)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted recipe overrides, e.g. quantize.repeats=5",
    )
    parser.add_argument("--model", help="model spec, model directory or LoRA adapter directory")
    add_online_flag(parser)


def _recipe(args: argparse.Namespace):
    """The recipe named on the command line, or a default one (name ``quantize``)."""
    from tutorlm.recipe import load_recipe, recipe_from_dict

    overrides = list(args.overrides or [])
    recipe_path = args.recipe
    if recipe_path and "=" in recipe_path and not Path(recipe_path).is_file():
        overrides.insert(0, recipe_path)  # no recipe: the first word was an override
        recipe_path = None
    if recipe_path:
        return load_recipe(recipe_path, overrides), True
    return recipe_from_dict({"name": "quantize"}, overrides, origin="command line"), False


def _model_label(spec: str) -> str:
    from tutorlm.evaluate.runner import model_label

    return model_label(spec)


def _configure_quantize(parser: argparse.ArgumentParser) -> None:
    from tutorlm.quantize.methods import METHODS

    _add_recipe(parser)
    parser.add_argument(
        "--method",
        action="append",
        choices=list(METHODS),
        help="method (repeatable; default the recipe's)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="parent folder: one model folder per method (default <run_dir>/quantize/models)",
    )
    parser.add_argument(
        "--no-embeddings",
        action="store_true",
        help="packed methods: keep embedding / output layer in float",
    )
    parser.add_argument(
        "--gguf",
        action="append",
        metavar="TYPE",
        help="also write a GGUF file for llama.cpp / Ollama: f32, f16, bf16, q8_0, q4_0 or q4_1",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the reload-and-generate check"
    )


def _run_quantize(args: argparse.Namespace) -> int:
    from tutorlm.models import apply_offline_env
    from tutorlm.quantize.compare import default_model
    from tutorlm.quantize.methods import QuantizeError, check_available
    from tutorlm.quantize.saving import load_quantized, quantize_to_dir

    apply_offline_env(args.online)
    recipe, from_file = _recipe(args)
    if not args.model and not from_file:
        raise QuantizeError("give --model SPEC (or a recipe whose run has a model to quantize)")
    spec = args.model or default_model(recipe)
    methods = args.method or ([] if args.gguf else recipe.quantize.methods)
    out = args.out or (
        recipe.layout.quantized_models if from_file else Path("quantized") / _model_label(spec)
    )
    for name in methods:
        check_available(name)  # fail before any work on a method this machine cannot run
    embeddings = recipe.quantize.embeddings and not args.no_embeddings
    for name in methods:
        record = quantize_to_dir(spec, name, out / name, embeddings=embeddings, online=args.online)
        ratio = record["weight_bytes"] / record["source"]["weight_bytes"]
        print(
            f"{name:<13} {record['weight_bytes'] / 2**20:8.1f} MiB ({ratio:.2f}x fp32)  -> {out / name}"
        )
        if not args.no_check:
            from tutorlm.generation import chat

            model, tokenizer = load_quantized(out / name)
            reply = chat(
                model, tokenizer, [{"role": "user", "content": "What is 2 + 3?"}], max_new_tokens=24
            )
            print(f"{'':<13} reloaded; 'What is 2 + 3?' -> {reply.strip()[:100]!r}")
    for qtype in args.gguf or []:
        _write_gguf(spec, qtype, out, check=not args.no_check, online=args.online)
    return 0


def _write_gguf(spec: str, qtype: str, out: Path, *, check: bool, online) -> None:
    """Export one GGUF file and, unless told not to, read it back through transformers."""
    from tutorlm.quantize.gguf_export import export_gguf

    path = out / f"{_model_label(spec)}.{qtype}.gguf"
    info = export_gguf(spec, path, qtype=qtype, online=online)
    print(f"gguf {qtype:<8} {info['bytes'] / 2**20:8.1f} MiB  -> {path}")
    if check:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tutorlm.generation import chat

        # a GGUF file holds tensors and metadata only: nothing in it can run code
        options = {"gguf_file": path.name, "trust_remote_code": False}
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
        model = AutoModelForCausalLM.from_pretrained(path.parent, **options).eval()
        question = [{"role": "user", "content": "What is 2 + 3?"}]
        reply = chat(model, tokenizer, question, max_new_tokens=24)
        print(f"{'':<13} read back by transformers; 'What is 2 + 3?' -> {reply.strip()[:100]!r}")


def _configure_compare(parser: argparse.ArgumentParser) -> None:
    _add_recipe(parser)
    parser.add_argument("--out", type=Path, help="output folder (default <run_dir>/quantize)")
    parser.add_argument("--methods", help="comma-separated methods (default the recipe's)")
    parser.add_argument(
        "--mcqa", type=Path, help="MCQA JSONL for the MMLU column instead of the run's"
    )
    parser.add_argument("--prefs", type=Path, help="preference JSONL for the reward column")
    parser.add_argument(
        "--reference",
        help="reward reference model (default: the model it was trained from, see docs/evaluate.md)",
    )
    parser.add_argument("--max-questions", type=int, help="MCQA questions / pairs per set")
    parser.add_argument("--new-tokens", type=int, help="tokens per timed generation")
    parser.add_argument(
        "--no-isolate", action="store_true", help="all rows in this process (no RSS column)"
    )
    add_device_flag(parser)


def _run_compare(args: argparse.Namespace) -> int:
    from tutorlm.models import apply_offline_env
    from tutorlm.quantize.compare import default_model, run_quantize_compare

    apply_offline_env(args.online)
    recipe, from_file = _recipe(args)
    updates = {
        "max_questions": args.max_questions,
        "new_tokens": args.new_tokens,
        "isolate": False if args.no_isolate else None,
    }
    updates = {key: value for key, value in updates.items() if value is not None}
    if updates:
        recipe = recipe.model_copy(update={"quantize": recipe.quantize.model_copy(update=updates)})
    spec = args.model or default_model(recipe)
    out = args.out or (
        recipe.layout.quantize_dir if from_file else Path("runs") / "quantize" / _model_label(spec)
    )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    run_quantize_compare(
        recipe,
        spec,
        out,
        methods=methods,
        mcqa=args.mcqa,
        prefs=args.prefs,
        reference=args.reference,
        device=args.device,
        echo=print,
    )
    print()
    print((out / "compare.md").read_text())
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {out / 'compare.png'}")
    return 0


QUANTIZE = Command(
    help="quantize a model (int8 / int4 on CPU, bitsandbytes on GPU), save it, check it reloads",
    configure=_configure_quantize,
    run=_run_quantize,
)
COMPARE = Command(
    help="one table of accuracy, memory and speed for every quantization method",
    configure=_configure_compare,
    run=_run_compare,
)
