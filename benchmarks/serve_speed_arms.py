"""The arms of ``benchmarks/serve_speed.py``: the weights each needs, its engine, the
prompts, one streamed request, concurrent clients, and the machine's description.

Every arm is an engine with the serving interface (``submit``, ``count_prompt_tokens``,
``close``); requests go to it in process, greedy, and are read as streams, so the
times are the engine's own (no HTTP).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from serve_load import QUESTIONS  # benchmarks/ is on sys.path when a script runs

ARMS = {  # key: (engine family, weights)
    "llama.cpp-q8_0": ("llama.cpp", "q8_0"),
    "llama.cpp-q4_0": ("llama.cpp", "q4_0"),
    "tutorlm-int8": ("tutorlm", "int8"),
    "tutorlm-int4": ("tutorlm", "int4"),
    "tutorlm-fp32": ("tutorlm", "fp32"),
    "transformers-fp32": ("transformers", "fp32"),
    "transformers-int8": ("transformers", "int8"),
}
SAME_BITS = {"tutorlm-int8": "llama.cpp-q8_0", "tutorlm-int4": "llama.cpp-q4_0"}
LOAD_ARMS = "tutorlm-int8,transformers-fp32,llama.cpp-q8_0"
DEMO_MODEL = "runs/demo/dpo/merged"
DEMO_INT8 = "runs/demo/quantize/models/int8-packed"
DEMO_RAG = "runs/demo/rag/index"
NOTES_DIR = Path(__file__).resolve().parents[1] / "src" / "tutorlm" / "assets" / "notes"

LONG_QUESTION = "Explain Newton's three laws of motion, each with an everyday example."
"""Answered at length by the demo's M2 in every arm (a worked equation gets "The answer
is 1." from it, too short to time decoding)."""
SHORT_QUESTIONS = QUESTIONS  # the serving load benchmark's eight short questions
NOTES_QUESTIONS = [
    "How does natural selection change a population over generations?",
    "What is the difference between an ionic and a covalent bond?",
    "Why is the running time of merge sort n log n?",
    "What does regularization do to an overfitting model?",
    "How do you compute the determinant of a 2 by 2 matrix?",
    "What does the conservation of energy say about a falling ball?",
    "What is the role of ATP in a cell?",
    "How does a hash table find a key quickly?",
]


def log(message: str) -> None:
    """A progress line on stderr (the results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def label(key: str) -> str:
    family, weights = ARMS[key]
    return f"{family} {weights}"


# ---- weights -----------------------------------------------------------------------


def prepare_weights(args, needed: set[str], scratch: Path) -> dict[str, str]:
    """A path for each weight format in ``needed``: given by flag, the demo's, already
    in ``scratch`` (``--scratch`` reused), or made there now."""
    from tutorlm.quantize.gguf_export import export_gguf
    from tutorlm.quantize.saving import quantize_to_dir

    paths = {"fp32": args.model}
    given = {"int8": args.int8, "int4": args.int4, "q8_0": args.gguf_q8, "q4_0": args.gguf_q4}
    if given["int8"] is None and Path(DEMO_INT8, "quantization.json").is_file():
        given["int8"] = DEMO_INT8
    for weights in sorted(needed - {"fp32"}):
        if given[weights]:
            paths[weights] = given[weights]
            continue
        if weights in ("q8_0", "q4_0"):
            out = scratch / f"model-{weights}.gguf"
            if not out.is_file():
                log(f"exporting GGUF {weights} to {out}")
                export_gguf(args.model, out, qtype=weights)
        else:
            out = scratch / f"{weights}-packed"
            if not (out / "quantization.json").is_file():
                log(f"quantizing {weights}-packed to {out}")
                quantize_to_dir(args.model, f"{weights}-packed", out)
        paths[weights] = str(out)
    return {w: p for w, p in paths.items() if w in needed}


def check_sources(paths: dict[str, str], model: str) -> list[str]:
    """Warnings for packed copies quantized from another model than ``model``."""
    from tutorlm.quantize.saving import read_record

    warnings = []
    for weights in ("int8", "int4"):
        if weights in paths:
            source = read_record(paths[weights]).get("source", {})
            path = source.get("path") or source.get("spec")
            if path and Path(path).resolve() != Path(model).resolve():
                warnings.append(f"{paths[weights]} was quantized from {path}, not {model}")
    return warnings


# ---- engines -----------------------------------------------------------------------


def llama_cpp_missing() -> str | None:
    """Why llama.cpp arms cannot run here (None when ``import llama_cpp`` works)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as error:
        return f"import llama_cpp failed ({error}); install: pip install 'tutorlm[llamacpp]'"
    return None


def open_arms(keys: list[str], paths: dict[str, str], args) -> tuple[dict, dict]:
    """``({key: open_engine}, {key: why skipped})``: models are loaded once and shared
    by the arms that use the same weights; each ``open_engine()`` starts a fresh
    engine (its own decoding thread), which the caller closes after its measure.

    One engine at a time, as one ``tutorlm serve`` process runs one: GNU OpenMP keeps
    a thread pool per thread that ran a parallel op and, once the pools outnumber the
    cores, puts idle threads to sleep after every op, so engines left open slow the
    one measured (by ~45 % here). A closed engine's thread ends, and its pool with it.
    """
    import torch

    from tutorlm.models import load_model
    from tutorlm.serve.engine import LocalEngine
    from tutorlm.serve.loading import load_serving_model
    from tutorlm.serve.stepped import SteppedEngine, unsupported_reason

    openers, skipped, models = {}, {}, {}
    for key in keys:
        family, weights = ARMS[key]
        try:
            if family == "llama.cpp":
                if (why := llama_cpp_missing()) is not None:
                    skipped[key] = why
                    continue
                from tutorlm.serve.llamacpp_engine import (
                    LlamaCppEngine,
                    load_gguf_tokenizer,
                    open_llama,
                )

                path = Path(paths[weights])
                llama = open_llama(path, n_ctx=args.max_len, n_threads=args.threads)
                tokenizer = load_gguf_tokenizer(path)
                openers[key] = functools.partial(LlamaCppEngine, llama, tokenizer, name=key)
                continue
            if weights not in models:
                log(f"loading {weights} from {paths[weights]}")
                if weights == "fp32":
                    models[weights] = load_model(paths[weights], dtype=torch.float32, device="cpu")
                else:
                    models[weights] = load_serving_model(paths[weights], device="cpu")
            model, tokenizer = models[weights]
            if family == "tutorlm":
                if (why := unsupported_reason(model)) is not None:
                    skipped[key] = f"the stepped engine cannot serve it: {why}"
                    continue
                openers[key] = functools.partial(
                    SteppedEngine,
                    model,
                    tokenizer,
                    name=key,
                    max_batch=args.max_batch,
                    max_len=args.max_len,
                )
            else:
                openers[key] = functools.partial(
                    LocalEngine,
                    model,
                    tokenizer,
                    name=key,
                    max_batch=args.max_batch,
                    batch_wait_s=0.005,
                )
        except Exception as error:  # one broken arm must not sink the others
            skipped[key] = f"failed to open: {error!r}"
        if key in skipped:
            log(f"skipping {key}: {skipped[key]}")
    return openers, skipped


@contextlib.contextmanager
def running(open_engine, warm_up: list):
    """An engine, warmed up on ``warm_up`` messages (2 tokens each), closed after."""
    engine = open_engine()
    try:
        for messages in warm_up:
            ask(engine, messages, 2)
        yield engine
    finally:
        engine.close()


def engine_threads() -> int:
    """torch threads of the engines' decoding threads."""
    from tutorlm.hardware import engine_threads as threads

    return threads()


# ---- prompts -----------------------------------------------------------------------


def short_messages(question: str) -> list[dict]:
    """The tutor's prompt for a question without notes (mode system prompt + question)."""
    from tutorlm.serve.tutor import Tutor

    return (
        Tutor(SimpleNamespace(tokenizer=None, name="bench"))
        .prepare([{"role": "user", "content": question}])
        .messages
    )


def notes_prompts(tokenizer, rag: str | None, target_tokens: int, k: int) -> tuple[list, str]:
    """One ~``target_tokens`` prompt per ``NOTES_QUESTIONS`` entry, and what they hold.

    With an index: the tutor's real prompt (``Tutor.prepare``) with ``k`` retrieved
    notes, the notes budget set so that the whole prompt is about ``target_tokens``.
    Without: the question under a system message of course notes cut from the
    bundled notes files, a different stretch for each question.
    """
    from tutorlm.serve.tutor import Tutor
    from tutorlm.templates import chat_prompt_ids

    def size(messages):
        return len(chat_prompt_ids(tokenizer, messages))

    shim = SimpleNamespace(tokenizer=tokenizer, name="bench")
    prompts = []
    if rag:
        from tutorlm.rag import load_index

        tutor = Tutor(shim, index=load_index(rag), k=k)
        for question in NOTES_QUESTIONS:
            ask_it = [{"role": "user", "content": question}]
            tutor.budget_tokens = max(64, target_tokens - size(short_messages(question)))
            for _ in range(2):  # correct for the citation instruction and numbering
                messages = tutor.prepare(ask_it).messages
                tutor.budget_tokens = max(64, tutor.budget_tokens + target_tokens - size(messages))
            prompts.append(tutor.prepare(ask_it).messages)
        return prompts, f"tutor prompt with {k} notes retrieved from {rag}"
    text = "\n\n".join(p.read_text() for p in sorted(NOTES_DIR.glob("*.md")))
    ids = tokenizer.encode(text, add_special_tokens=False)
    for number, question in enumerate(NOTES_QUESTIONS):
        messages = short_messages(question)
        room = max(64, target_tokens - size(messages) - 4)
        start = (number * len(ids) // len(NOTES_QUESTIONS)) % max(1, len(ids) - room)
        notes = tokenizer.decode((ids * 2)[start : start + room])
        messages[0]["content"] += "\n\nCourse notes:\n" + notes
        prompts.append(messages)
    return prompts, f"system message of course notes cut from {NOTES_DIR.name}/*.md"


# ---- requests ----------------------------------------------------------------------


def ask(engine, messages: list[dict], max_tokens: int) -> dict:
    """One greedy request, read as a stream: TTFT, decode tokens/s, reply."""
    from tutorlm.serve.engine import GenerationRequest

    request = GenerationRequest(messages=messages, max_tokens=max_tokens, temperature=0.0)
    started = time.monotonic()
    pieces, last = [], None
    try:
        stream = engine.submit(request)
        for piece in stream:
            pieces.append(piece)
            last = time.monotonic()
    except Exception as error:
        return {"error": repr(error), "latency": time.monotonic() - started}
    finish, first = stream.finish, stream.first_token_at
    tokens = finish.completion_tokens
    decode = None
    if first is not None and last is not None and tokens > 1 and last > first:
        decode = (tokens - 1) / (last - first)
    return {
        "ttft": (first - started) if first is not None else None,
        "decode_tps": decode,
        "tokens": tokens,
        "prompt_tokens": finish.prompt_tokens,
        "finish": finish.reason,
        "latency": time.monotonic() - started,
        "text": "".join(pieces),
        "error": None,
    }


def run_clients(engine, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``requests`` short-prompt requests back to back
    (client n, turn t asks ``SHORT_QUESTIONS[(n + t) % 8]``)."""
    results, lock = [], threading.Lock()
    gate = threading.Barrier(clients)

    def client(number: int) -> None:
        gate.wait()
        for turn in range(requests):
            question = SHORT_QUESTIONS[(number + turn) % len(SHORT_QUESTIONS)]
            result = ask(engine, short_messages(question), max_tokens)
            result["question"] = question
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"results": results, "wall_s": time.monotonic() - started}


def run_alone(engine, questions: list[str], max_tokens: int) -> dict:
    """The same requests one after another, one client: references and the 1-client rate."""
    started = time.monotonic()
    results = []
    for question in questions:
        result = ask(engine, short_messages(question), max_tokens)
        result["question"] = question
        results.append(result)
    return {"results": results, "wall_s": time.monotonic() - started}


# ---- the machine -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_matrix_flags() -> list[str]:
    """Which of avx512_bf16 / AMX this CPU has (what bf16 and int8 matmuls use)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    wanted = ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
    return [flag for flag in wanted if flag in flags]


def versions() -> dict:
    import importlib.metadata

    found = {}
    for package in ("torch", "transformers", "llama_cpp_python", "tutorlm"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the section under ``heading`` (up to the next ``## ``) replaced by
    ``body``, or ``body`` appended when there is no such section."""
    body = body.rstrip("\n") + "\n"
    start = text.find(heading + "\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + body
    end = text.find("\n## ", start + len(heading))
    if end < 0:
        return text[:start] + body
    return text[:start] + body + "\n" + text[end + 1 :]
