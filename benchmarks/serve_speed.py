"""Serving speed of the engines side by side on this CPU (issue 19): llama.cpp on GGUF
q8_0 / q4_0, tutorlm's stepped engine on the int8 / int4 packed copies and the float
model, and transformers' ``generate`` (what ``serve`` ran before), same weights.

    .venv/bin/python benchmarks/serve_speed.py --rounds 3 --tokens 64 --clients 8 \\
        --requests 2 [--threads N] [--arms a,b] [--scratch DIR] [--write-docs]

All arms are open at once in this process and measured in interleaved rounds
(round 1: every arm, round 2: every arm in the reverse order, ...), greedy, with the
same prompts and the same thread count (torch threads = llama.cpp ``n_threads``):

1. batch-1 decode tokens/s: one request alone with a long answer,
   ``(completion_tokens - 1) / (last piece - first piece)``; min / median / max over
   rounds, and each tutorlm arm against llama.cpp at the same bits;
2. time to first token, p50, with the tutor's short prompt and with a ~700-token
   prompt of course notes (the tutor's real prompt with notes retrieved from
   ``--rag``, else notes text from the bundled notes files);
3. ``--clients`` streaming clients, each sending ``--requests`` short requests to one
   engine (``--load-arms``): aggregate tokens/s against one client, TTFT p50 / p95,
   errors, and whether each reply equals the same request sent alone.

Weights: ``--model`` (the demo's M2), its int8 copy (the demo's, else made), an int4
copy and the GGUF files, made in ``--scratch`` (a temporary folder unless given; a
given one is reused by the next run). Progress goes to stderr, the tables to stdout,
the figures to ``--json``; ``--write-docs`` replaces this benchmark's section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_speed_arms as arms  # noqa: E402
from serve_speed_arms import ARMS, SAME_BITS, label, log  # noqa: E402

HEADING = "## Serving speed: engines side by side (issue 19)"
TTFT_TOKENS = 4
"""Tokens asked for in the TTFT requests: enough for a first piece of text."""
TARGETS = {
    "batch1_ratio": 1.0,
    "ttft_notes_s": 0.5,
    "load_ratio": 3.0,
    "load_ttft_p95_s": 2.0,
}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=arms.DEMO_MODEL, help="float model (the demo's M2)")
    parser.add_argument(
        "--int8",
        default=None,
        help=f"int8-packed copy (default {arms.DEMO_INT8} when present, else made in --scratch)",
    )
    parser.add_argument("--int4", default=None, help="int4-packed copy (default: made)")
    parser.add_argument("--gguf-q8", default=None, help="GGUF q8_0 file (default: exported)")
    parser.add_argument("--gguf-q4", default=None, help="GGUF q4_0 file (default: exported)")
    parser.add_argument("--scratch", default=None, help="folder for made copies, kept")
    parser.add_argument("--arms", default=",".join(ARMS), help="arms to run, comma-separated")
    parser.add_argument("--load-arms", default=arms.LOAD_ARMS, help="arms of the client test")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for every arm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of the decode test")
    parser.add_argument("--ttft-samples", type=int, default=2, help="TTFT prompts per round")
    parser.add_argument("--notes-tokens", type=int, default=700, help="notes prompt size")
    parser.add_argument("--notes-k", type=int, default=8, help="notes retrieved (with --rag)")
    parser.add_argument(
        "--rag",
        default=None,
        help=f"index folder (default {arms.DEMO_RAG} "
        "if present; 'none': notes text without an index)",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--load-tokens", type=int, default=64, help="max_tokens per request")
    parser.add_argument("--max-batch", type=int, default=8, help="batch of the torch engines")
    parser.add_argument("--max-len", type=int, default=2048, help="positions per KV slot")
    parser.add_argument("--json", default="runs/bench/serve_speed.json")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--docs", default="docs/benchmarks.md", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON job file
    args = parser.parse_args()
    args.arm_keys = [a for a in args.arms.split(",") if a]
    args.load_keys = [a for a in args.load_arms.split(",") if a]
    unknown = [a for a in args.arm_keys + args.load_keys if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    if args.rag is None and Path(arms.DEMO_RAG, "manifest.json").is_file():
        args.rag = arms.DEMO_RAG
    if args.rag in ("none", ""):
        args.rag = None
    return args


def in_worker(job: dict, args) -> dict:
    """Run one arm's turn in a fresh process and return what it measured.

    One process per turn, as one ``tutorlm serve`` process runs one engine: GNU OpenMP
    (which torch and llama.cpp's ggml share) keeps a thread pool per thread that ran a
    parallel op and, once the pools outnumber the cores, puts idle threads to sleep
    after every op; engines opened side by side in one process slow each other ~2x.
    """
    with tempfile.TemporaryDirectory(prefix="serve-speed-job-") as folder:
        job_file, out_file = Path(folder, "job.json"), Path(folder, "out.json")
        job_file.write_text(json.dumps({**job, "out": str(out_file)}))
        command = [sys.executable, __file__, *sys.argv[1:], "--worker", str(job_file)]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
        if done.returncode != 0 or not out_file.is_file():
            return {"error": f"worker exited with {done.returncode}"}
        return json.loads(out_file.read_text())


def worker_main(args) -> None:
    """The worker side of :func:`in_worker`: open the arm's engine, run the job."""
    job = json.loads(Path(args.worker).read_text())
    key, prompts = job["key"], job["prompts"]
    openers, failed = arms.open_arms([key], job["weights"], args)
    if key in failed:
        result = {"error": failed[key]}
    elif job["phase"] == "measure":
        result = measure_turn(openers[key], prompts, job["round"], args)
    else:
        result = load_turn(openers[key], args)
    Path(job["out"]).write_text(json.dumps(result))


def measure_turn(open_engine, prompts: dict, number: int, args) -> dict:
    """One arm's turn in round ``number``: the decode request, then TTFT samples."""
    found = {"decode": [], "ttft_short": [], "ttft_notes": []}
    warm_up = [arms.short_messages(arms.SHORT_QUESTIONS[-1]), prompts["notes"][-1]]
    with arms.running(open_engine, warm_up) as engine:
        found["decode"].append(arms.ask(engine, prompts["decode"], args.tokens))
        for sample in range(args.ttft_samples):
            which = (number * args.ttft_samples + sample) % len(arms.SHORT_QUESTIONS)
            for phase, messages in (
                ("ttft_short", arms.short_messages(arms.SHORT_QUESTIONS[which])),
                ("ttft_notes", prompts["notes"][which % len(prompts["notes"])]),
            ):
                timed = arms.ask(engine, messages, TTFT_TOKENS)
                timed.pop("text", None)
                found[phase].append(timed)
    return found


def load_turn(open_engine, args) -> dict:
    """One client, then ``--clients`` at once, on one engine."""
    pairs = [(n, t) for n in range(args.clients) for t in range(args.requests)]
    questions = list(
        dict.fromkeys(arms.SHORT_QUESTIONS[(n + t) % len(arms.SHORT_QUESTIONS)] for n, t in pairs)
    )
    with arms.running(open_engine, [arms.short_messages(arms.SHORT_QUESTIONS[-1])]) as engine:
        alone = arms.run_alone(engine, questions, args.load_tokens)
        together = arms.run_clients(engine, args.clients, args.requests, args.load_tokens)
    return {"alone": alone, "together": together}


def measure(keys: list[str], weights: dict, prompts: dict, args) -> dict:
    """Decode and TTFT requests, every arm in every round (order reversed every other),
    each turn in a process of its own (:func:`in_worker`)."""
    found = {phase: {k: [] for k in keys} for phase in ("decode", "ttft_short", "ttft_notes")}
    for number in range(args.rounds):
        order = keys if number % 2 == 0 else keys[::-1]
        for key in order:
            job = {"key": key, "phase": "measure", "round": number}
            turn = in_worker({**job, "weights": weights, "prompts": prompts}, args)
            if "error" in turn:
                turn = {phase: [{"error": turn["error"]}] for phase in found}
            for phase, results in turn.items():
                found[phase][key].extend(results)
            result = turn["decode"][0]
            if (result.get("tokens") or 0) < args.tokens // 2:
                log(f"warning: {key} stopped after {result.get('tokens')} tokens: {result}")
            log(
                f"round {number + 1} {key}: decode {fmt(result.get('decode_tps'))} tokens/s "
                f"({result.get('tokens')} tokens), TTFT short / notes "
                f"{fmt(found['ttft_short'][key][-1].get('ttft'))} / "
                f"{fmt(found['ttft_notes'][key][-1].get('ttft'))} s {result.get('error') or ''}"
            )
    return found


def load_test(keys: list[str], weights: dict, prompts: dict, args) -> dict:
    """The client test on each of the load arms, each in a process of its own."""
    found = {}
    for key in [k for k in args.load_keys if k in keys]:
        log(f"clients {key}: alone, then {args.clients} clients x {args.requests} requests")
        job = {"key": key, "phase": "load", "weights": weights, "prompts": prompts}
        turn = in_worker(job, args)
        if "error" not in turn:
            found[key] = turn
    return found


def summarize(found: dict, load: dict, skipped: dict) -> dict:
    summary = {"decode": {}, "ratios": {}, "ttft": {}, "load": {}, "skipped": skipped}
    for key, results in found["decode"].items():
        rates = [r["decode_tps"] for r in results if r.get("decode_tps")]
        summary["decode"][key] = {
            "min": min(rates) if rates else None,
            "median": median(rates),
            "max": max(rates) if rates else None,
            "per_round": [r.get("decode_tps") for r in results],
            "completion_tokens": [r.get("tokens") for r in results],
            "errors": sum(1 for r in results if r.get("error")),
            "reply": next((r["text"] for r in results if r.get("text")), ""),
        }
    for ours, theirs in SAME_BITS.items():
        a, b = summary["decode"].get(ours), summary["decode"].get(theirs)
        if a and b and a["median"] and b["median"]:
            ratio = a["median"] / b["median"]
            summary["ratios"][ours] = {
                "against": theirs,
                "ratio": ratio,
                "target": verdict(ratio >= TARGETS["batch1_ratio"]),
            }
    for key in found["ttft_short"]:
        short, notes = found["ttft_short"][key], found["ttft_notes"][key]
        p50 = median([r["ttft"] for r in notes if r.get("ttft") is not None])
        summary["ttft"][key] = {
            "short_p50_s": median([r["ttft"] for r in short if r.get("ttft") is not None]),
            "short_prompt_tokens": median(
                [r["prompt_tokens"] for r in short if "prompt_tokens" in r]
            ),
            "notes_p50_s": p50,
            "notes_prompt_tokens": median(
                [r["prompt_tokens"] for r in notes if "prompt_tokens" in r]
            ),
            "samples": len(notes),
            "errors": sum(1 for r in short + notes if r.get("error")),
            "target": verdict(None if p50 is None else p50 <= TARGETS["ttft_notes_s"]),
        }
    for key, runs in load.items():
        reference = {r["question"]: r for r in runs["alone"]["results"] if not r.get("error")}
        results = runs["together"]["results"]
        one = sum(r.get("tokens", 0) for r in runs["alone"]["results"]) / runs["alone"]["wall_s"]
        many = sum(r.get("tokens", 0) for r in results) / runs["together"]["wall_s"]
        ttfts = [r["ttft"] for r in results if r.get("ttft") is not None]
        errors = sum(1 for r in results if r.get("error"))
        same = sum(
            1
            for r in results
            if not r.get("error")
            and r["question"] in reference
            and r["text"] == reference[r["question"]]["text"]
        )
        p95 = percentile(ttfts, 0.95)
        ratio = many / one if one else None
        summary["load"][key] = {
            "one_client_tps": one,
            "clients_tps": many,
            "ratio": ratio,
            "ttft_p50_s": median(ttfts),
            "ttft_p95_s": p95,
            "requests": len(results),
            "errors": errors,
            "identical": same,
            "differing": [
                r["question"]
                for r in results
                if not r.get("error")
                and r["question"] in reference
                and r["text"] != reference[r["question"]]["text"]
            ],
            "targets": {
                "ratio": verdict(None if ratio is None else ratio >= TARGETS["load_ratio"]),
                "ttft_p95": verdict(None if p95 is None else p95 <= TARGETS["load_ttft_p95_s"]),
                "errors": verdict(errors == 0),
                "identical": verdict(same == len(results) and errors == 0),
            },
        }
    return summary


def tables(summary: dict, meta: dict, args) -> list[str]:
    """The markdown of one run: the machine, the command, three tables."""
    lines = [
        f"Date: {meta['date']}. CPU: {meta['cpu']} ({meta['cores']} cores; "
        f"{', '.join(meta['cpu_flags']) or 'no avx512_bf16 / AMX'}). Threads: {meta['threads']} "
        f"for every arm (torch in the engine thread: {meta['engine_threads']}). Load average "
        f"before {meta['load_before'][0]:.1f}, after {meta['load_after'][0]:.1f} (1 min). "
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"Weights: {', '.join(f'{k}: `{v}`' for k, v in meta['weights'].items())}. "
        f"Notes prompt: {meta['notes_source']}.",
    ]
    for key, why in summary["skipped"].items():
        lines.append(f"Skipped {label(key)}: {why}.")
    lines += [
        "",
        f"### Batch-1 decode, {args.tokens} tokens, {args.rounds} rounds",
        "",
        "| arm | tokens/s min / median / max | reply tokens | vs llama.cpp, same bits "
        f"| target >= {TARGETS['batch1_ratio']:.1f}x |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, d in summary["decode"].items():
        ratio = summary["ratios"].get(key)
        vs = f"{ratio['ratio']:.2f}x {label(ratio['against'])}" if ratio else "-"
        tokens = "/".join(str(t) for t in d["completion_tokens"])
        lines.append(
            f"| {label(key)} | {fmt(d['min'], 1)} / {fmt(d['median'], 1)} / "
            f"{fmt(d['max'], 1)} | {tokens} | {vs} | {ratio['target'] if ratio else '-'} |"
        )
    lines += [
        "",
        "### Time to first token (p50)",
        "",
        "| arm | short prompt tokens | TTFT short s | notes prompt tokens | TTFT notes s "
        f"| target <= {TARGETS['ttft_notes_s']} s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, t in summary["ttft"].items():
        lines.append(
            f"| {label(key)} | {fmt(t['short_prompt_tokens'], 0)} | "
            f"{fmt(t['short_p50_s'], 3)} | {fmt(t['notes_prompt_tokens'], 0)} | "
            f"{fmt(t['notes_p50_s'], 3)} | {t['target']} |"
        )
    if summary["load"]:
        lines += [
            "",
            f"### {args.clients} streaming clients x {args.requests} requests, "
            f"{args.load_tokens} tokens each",
            "",
            "| engine | 1 client tokens/s | clients tokens/s | ratio (>= 3x) | TTFT p50 / "
            "p95 s (p95 <= 2 s) | errors | replies equal to alone |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, d in summary["load"].items():
            t = d["targets"]
            lines.append(
                f"| {label(key)} | {fmt(d['one_client_tps'], 1)} | {fmt(d['clients_tps'], 1)} "
                f"| {fmt(d['ratio'])}x {t['ratio']} | {fmt(d['ttft_p50_s'])} / "
                f"{fmt(d['ttft_p95_s'])} {t['ttft_p95']} | {d['errors']} {t['errors']} | "
                f"{d['identical']}/{d['requests']} {t['identical']} |"
            )
    return lines


def main() -> None:
    args = parse_args()
    from tutorlm.hardware import reserve_cores_for_engine

    # as `tutorlm serve` does: the engine's thread computes on --threads cores, every
    # other thread on one, so no idle OpenMP pool slows it
    reserve_cores_for_engine(args.threads)
    if args.worker:
        worker_main(args)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = arms.load_average()
    log(
        f"{arms.cpu_model()}, {os.cpu_count()} cores, threads {args.threads}, "
        f"load average {load_before}"
    )
    keys = list(dict.fromkeys(args.arm_keys))
    skipped = {}
    if (why := arms.llama_cpp_missing()) is not None:
        skipped = {k: why for k in keys if ARMS[k][0] == "llama.cpp"}
        for key in skipped:
            log(f"skipping {key}: {why}")
        keys = [k for k in keys if k not in skipped]
    with tempfile.TemporaryDirectory(prefix="serve-speed-") as temporary:
        scratch = Path(args.scratch or temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        weights = arms.prepare_weights(args, {ARMS[k][1] for k in keys}, scratch)
        for warning in arms.check_sources(weights, args.model):
            log(f"warning: {warning}")
        from tutorlm.models import load_tokenizer

        tokenizer = load_tokenizer(args.model)
        notes, notes_source = arms.notes_prompts(
            tokenizer, args.rag, args.notes_tokens, args.notes_k
        )
        prompts = {"decode": arms.short_messages(arms.LONG_QUESTION), "notes": notes}
        found = measure(keys, weights, prompts, args)
        load = load_test(keys, weights, prompts, args)
    summary = summarize(found, load, skipped)
    meta = {
        "date": datetime.date.today().isoformat(),
        "cpu": arms.cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": arms.cpu_matrix_flags(),
        "threads": args.threads,
        "engine_threads": arms.engine_threads(),
        "load_before": load_before,
        "load_after": arms.load_average(),
        "versions": arms.versions(),
        "command": ".venv/bin/python benchmarks/serve_speed.py " + shlex.join(sys.argv[1:]),
        "weights": weights,
        "notes_source": notes_source,
    }
    lines = tables(summary, meta, args)
    print("\n".join(lines))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = {"measures": found, "load": load}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "raw": raw}, indent=2))
    log(f"wrote {out}")
    if args.write_docs:
        docs = Path(args.docs)
        intro = [
            HEADING,
            "",
            "`benchmarks/serve_speed.py` (see its docstring for the method). "
            "llama.cpp reuses the cached prefix of its previous prompt (the system "
            "prompt); the torch engines read every prompt in full.",
            "",
        ]
        text = docs.read_text() if docs.is_file() else "# Benchmarks\n"
        docs.write_text(arms.replace_section(text, HEADING, "\n".join(intro + lines)))
        log(f"updated {docs}")


if __name__ == "__main__":
    main()
