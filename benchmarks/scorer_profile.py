"""Where a scoring forward pass spends its time, and what cheaper matmuls would buy.

The figures behind "why 5x is out of reach" in docs/benchmarks.md (Evaluation): one
forward of the bundled SmolLM2-135M-Instruct over a batch of 8 x 110 tokens with
logits at the last position only (what letter scoring runs), in bf16, fp32, PyTorch's
dynamic int8 (``torch.ao`` fbgemm, deprecated) and torchao's int8 dynamic activation
+ int8 weight; the share of each op in the bf16 forward (torch profiler); and bare
GEMM throughput at the model's MLP shape in bf16 and fp32.

    .venv/bin/python benchmarks/scorer_profile.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def seconds_per_forward(model, ids, mask, repeats: int) -> float:
    import torch

    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    return (time.perf_counter() - started) / repeats


def gemm_gflops(dtype, rows: int, inner: int, outer: int, repeats: int = 50) -> float:
    import torch

    a = torch.randn(rows, inner).to(dtype)
    w = torch.randn(outer, inner).to(dtype)
    with torch.inference_mode():
        torch.nn.functional.linear(a, w)
        started = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(a, w)
    return 2 * rows * inner * outer * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=110)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from tutorlm.models import BUNDLED, load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    fp32, _ = load_model(BUNDLED, dtype=torch.float32)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    rows = {
        "fp32": seconds_per_forward(fp32, ids, mask, args.repeats),
        "bf16": seconds_per_forward(bf16, ids, mask, args.repeats),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8
        )
    rows["int8 dynamic (torch.ao, fbgemm)"] = seconds_per_forward(dynamic, ids, mask, args.repeats)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        ao = copy.deepcopy(fp32).to(torch.bfloat16)
        quantize_(ao, Int8DynamicActivationInt8WeightConfig())
        rows["int8 dynamic (torchao)"] = seconds_per_forward(ao, ids, mask, args.repeats)
    except ImportError:
        pass

    print(f"one forward, batch {args.batch} x {args.tokens} tokens, {args.threads} threads:")
    for name, value in rows.items():
        print(f"  {name:<32} {value:.3f} s  ({rows['bf16'] / value:.2f}x bf16)")

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            bf16(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))

    hidden = fp32.config.hidden_size
    inner = fp32.config.intermediate_size
    tokens = args.batch * args.tokens
    for dtype in (torch.bfloat16, torch.float32):
        gflops = gemm_gflops(dtype, tokens, hidden, inner)
        print(
            f"GEMM {tokens}x{hidden}x{inner} {str(dtype).removeprefix('torch.')}: {gflops:.0f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
