"""Load on ``tutorlm serve``: requests/s, tokens/s, time to first token and latency
percentiles, one request at a time (``max_batch=1``, what a lock gives) against the
batching queue, side by side in one run on the same loaded model.

    .venv/bin/python benchmarks/serve_load.py --clients 8 --requests 2 --max-tokens 32 \\
        --batches 1,8 --rounds 2 [--rag INDEX_DIR] [--screenshot docs/img/serve-page.png]

Clients run as threads in this process and stream through plain HTTP to a uvicorn
server on loopback, reading ``usage`` from the last chunk. With ``--screenshot PNG``
it also photographs the chat page answering ``--screenshot-question`` (headless Chromium).
The figures go to docs/benchmarks.md (section "Serving").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import threading
import time

import httpx

QUESTIONS = [
    "What does the derivative of a function measure?",
    "State Newton's second law and explain it with an example.",
    "What is the difference between mitosis and meiosis?",
    "How does gradient descent update the weights of a model?",
    "Why is momentum conserved in a collision?",
    "What is a covalent bond?",
    "What does the chain rule say?",
    "How does binary search work, and what is its running time?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def one_request(url: str, model: str, question: str, max_tokens: int) -> dict:
    """Stream one reply; return its latency, time to first token and token count."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, usage = None, None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            usage = event.get("usage") or usage
            choices = event.get("choices") or []
            if first is None and choices and choices[0]["delta"].get("content"):
                first = time.perf_counter() - started
    return {
        "latency": time.perf_counter() - started,
        "ttft": first if first is not None else float("nan"),
        "tokens": usage["completion_tokens"],
    }


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``requests`` streamed requests back to back."""
    results, errors = [], []
    lock = threading.Lock()

    def client(number: int) -> None:
        for turn in range(requests):
            question = QUESTIONS[(number + turn) % len(QUESTIONS)]
            try:
                result = one_request(url, model, question, max_tokens)
            except Exception as error:
                with lock:
                    errors.append(repr(error))
                continue
            with lock:
                results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"results": results, "errors": errors, "wall_s": time.perf_counter() - started}


def summarize(runs: list[dict]) -> dict:
    """Figures over all rounds of one configuration (rates: totals over total wall time)."""
    results = [r for run in runs for r in run["results"]]
    wall = sum(run["wall_s"] for run in runs)
    latencies = [r["latency"] for r in results]
    ttfts = [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests": len(results),
        "errors": sum(len(run["errors"]) for run in runs),
        "requests_per_s": len(results) / wall,
        "tokens_per_s": tokens / wall,
        "mean_tokens": tokens / max(1, len(results)),
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": percentile(ttfts, 0.95),
        "latency_p50": statistics.median(latencies),
        "latency_p95": percentile(latencies, 0.95),
    }


def screenshot(url: str, path: str, question: str) -> None:
    """The page answering ``question``, with its notes opened, as a PNG."""
    from playwright.sync_api import sync_playwright

    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 900, "height": 760})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.wait_for_selector("#model:not(:text('connecting…'))")  # the page's CSP forbids eval
        page.fill("#question", question)
        page.press("#question", "Enter")
        page.wait_for_selector(".message.assistant[data-state='done']")
        if page.locator(".sources details summary").count():
            page.locator(".sources details summary").first.click()  # one source opened
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": 900, "height": min(int(height), 1600)})
        page.screenshot(path=path)
        browser.close()


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--rag", default=None, help="index directory (tutorlm index build)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,8", help="max_batch values to compare")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setting")
    parser.add_argument("--screenshot", default=None, help="also save a PNG of the page")
    parser.add_argument("--screenshot-question", default="What does Newton's second law say?")
    args = parser.parse_args()

    import torch

    from tutorlm.rag import load_index
    from tutorlm.serve.api import create_app
    from tutorlm.serve.commands import served_name
    from tutorlm.serve.config import ServeConfig
    from tutorlm.serve.engine import LocalEngine
    from tutorlm.serve.loading import load_serving_model
    from tutorlm.serve.server import BackgroundServer
    from tutorlm.serve.tutor import Tutor

    model, tokenizer = load_serving_model(args.model, device="auto")
    index = load_index(args.rag) if args.rag else None
    name = served_name(args.model)
    threads = []  # the engine decodes in its own thread, whose OpenMP setting may differ
    probe = threading.Thread(target=lambda: threads.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    print(f"machine: {machine()}; torch threads {threads[0]}; device {model.device}")
    print(
        f"load: {args.clients} clients x {args.requests} streamed requests, "
        f"max_tokens {args.max_tokens}, notes: {args.rag or 'none'}"
    )
    batches = [int(b) for b in args.batches.split(",")]
    config = ServeConfig(
        max_queue=max(64, args.clients * 2), request_timeout_s=3600, default_max_tokens=160
    )
    runs: dict[int, list[dict]] = {b: [] for b in batches}
    with contextlib.ExitStack() as stack:
        servers, engines = {}, {}
        for max_batch in batches:
            engine = LocalEngine(model, tokenizer, name=name, max_batch=max_batch)
            stack.callback(engine.close)
            tutor = Tutor(engine, index=index)
            tutor.warm_up()
            servers[max_batch] = stack.enter_context(BackgroundServer(create_app(tutor, config)))
            engines[max_batch] = engine
            one_request(servers[max_batch].url, name, QUESTIONS[0], 4)  # warm-up, not counted
            engine.batch_sizes.clear()
        for round_number in range(args.rounds):  # interleaved, so drifting load hits both
            order = batches if round_number % 2 == 0 else batches[::-1]
            for max_batch in order:
                run = run_load(
                    servers[max_batch].url, name, args.clients, args.requests, args.max_tokens
                )
                runs[max_batch].append(run)
                tokens = sum(r["tokens"] for r in run["results"])
                print(
                    f"round {round_number + 1}, max_batch {max_batch}: "
                    f"{tokens / run['wall_s']:.2f} tokens/s, {len(run['errors'])} errors, "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        if args.screenshot:
            screenshot(servers[batches[-1]].url, args.screenshot, args.screenshot_question)
    print(
        "\n| max_batch | requests | errors | requests/s | tokens/s | tokens/reply | "
        "TTFT p50 / p95 s | latency p50 / p95 s | mean batch |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for max_batch in batches:
        figures = summarize(runs[max_batch])
        sizes = engines[max_batch].batch_sizes
        mean_batch = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        print(
            f"| {max_batch} | {figures['requests']} | {figures['errors']} | "
            f"{figures['requests_per_s']:.3f} | {figures['tokens_per_s']:.2f} | "
            f"{figures['mean_tokens']:.1f} | {figures['ttft_p50']:.1f} / {figures['ttft_p95']:.1f} | "
            f"{figures['latency_p50']:.1f} / {figures['latency_p95']:.1f} | {mean_batch:.1f} |"
        )
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
