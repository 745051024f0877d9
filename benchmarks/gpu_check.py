"""A GPU check that fits a short GPU slot: every GPU path of tutorlm on tiny models, timed.

For each tiny random model (Llama and Qwen2 shapes, ``tutorlm.smoke.tiny_model``):

- SFT -> DPO through ``tutorlm.train`` on the chosen device (bf16 on CUDA), then MCQA
  scoring of the final model on the bundled notes questions (``tutorlm.evaluate``);
- a QLoRA nf4 SFT run and a bitsandbytes 8-bit scoring row, only where bitsandbytes
  imports and CUDA is present (otherwise the JSON says ``skipped: why``);
- the same questions scored in float32 on CUDA and on the CPU: the share of equal
  predictions, which says the device path changes nothing but rounding;
- training tokens/s, scoring questions/s and peak memory of each step
  (``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on a CPU).

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --steps 1 --questions 2 --out cpu.json

On one H100 it is meant to take well under 8 minutes. The models are random, so
accuracy is noise; the numbers that mean something are agreement, speed and memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ("llama", "qwen2")


def skipped(why: str) -> dict:
    print(f"  skipped: {why}", flush=True)
    return {"skipped": why}


def write_data(workdir: Path, rows: int) -> tuple[Path, Path]:
    """SFT records and preference pairs: the training benchmark's synthetic STEM chats."""
    from train_throughput import stem_rows  # benchmarks/ is this script's folder

    paths = workdir / "sft.jsonl", workdir / "prefs.jsonl"
    for path, records in zip(paths, stem_rows(rows), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths


class Meter:
    """Wall time and peak memory of one step on ``device``."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:  # the process's peak so far: Linux reports KiB
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.seconds = time.perf_counter() - self.started

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def row(self) -> dict:
        kind = "cuda_max_allocated" if self.cuda else "peak_rss"
        return {
            "seconds": round(self.seconds, 3),
            "peak_mib": round(self.peak_mib, 1),
            "peak": kind,
        }


def token_counter():
    """A callback keeping the trainer's running count of real (non-pad) tokens."""
    from transformers import TrainerCallback

    class Tokens(TrainerCallback):
        tokens = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self.tokens = logs["num_tokens"]

    return Tokens()


def recipe_for(model_dir, workdir, data, device, steps, name, qlora=False):
    from tutorlm.recipe import recipe_from_dict

    cuda = device.startswith("cuda")
    section = {
        "per_device_train_batch_size": 4,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "max_length": 128,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "bf16": cuda,
        "disable_tqdm": True,
        "report_to": "none",
    }
    return recipe_from_dict(
        {
            "name": name,
            "model": str(model_dir),
            "run_root": str(workdir / "runs"),
            "device": device,
            "train": {
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                "qlora": qlora,
                "sft_train_file": str(data[0]),
                "prefs_train_file": str(data[1]),
                "sft": section,
                "dpo": section,
            },
        }
    )


def train(stage: str, recipe, device: str) -> tuple[dict, Path]:
    from tutorlm.train.dpo import train_dpo
    from tutorlm.train.sft import train_sft

    counter = token_counter()
    with Meter(device) as meter:
        result = (train_sft if stage == "sft" else train_dpo)(recipe, callbacks=[counter])
    row = meter.row() | {"steps": result.global_step, "tokens": counter.tokens}
    row["tokens_per_s"] = round(counter.tokens / meter.seconds, 1)
    print(f"  {stage}: {row['tokens_per_s']} tokens/s, peak {row['peak_mib']} MiB", flush=True)
    return row, result.merged_dir


def score(scorer, records, device: str, label: str) -> tuple[dict, list[int]]:
    from tutorlm.evaluate.mcqa import evaluate_mcqa

    with Meter(device) as meter:
        result = evaluate_mcqa(scorer, records, resamples=0)
    row = meter.row() | {
        "n": result.n,
        "accuracy": result.accuracy.to_dict(),
        "questions_per_s": round(result.n / meter.seconds, 2),
    }
    print(f"  {label}: {row['questions_per_s']} questions/s on {scorer.device}", flush=True)
    return row, [p.predicted for p in result.predictions]


def agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def check_family(family: str, args, device: str, workdir: Path, records) -> dict:
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.smoke import tiny_model

    print(f"{family}:", flush=True)
    model_dir = tiny_model(family)
    data = write_data(workdir, rows=16)
    cuda = device.startswith("cuda")
    out: dict = {"model": str(model_dir)}
    recipe = recipe_for(model_dir, workdir, data, device, args.steps, f"check-{family}")
    out["sft"], _ = train("sft", recipe, device)
    out["dpo"], final = train("dpo", recipe, device)
    dtype = "bfloat16" if cuda else "float32"
    scorer = Scorer.from_spec(str(final), device=device, dtype=dtype)
    out["eval"], predicted = score(scorer, records, device, f"eval ({dtype})")
    out["eval"]["dtype"] = dtype
    if not cuda:
        out["agreement"] = skipped("CUDA vs CPU needs a CUDA device")
        out["qlora"] = skipped("QLoRA nf4 needs a CUDA device")
        out["bnb_int8_eval"] = skipped("bitsandbytes 8-bit needs a CUDA device")
        return out
    on_gpu, gpu_predicted = score(
        Scorer.from_spec(str(final), device=device, dtype="float32"), records, device, "fp32 cuda"
    )
    _, cpu_predicted = score(
        Scorer.from_spec(str(final), device="cpu", dtype="float32"), records, "cpu", "fp32 cpu"
    )
    share = agreement(gpu_predicted, cpu_predicted)
    out["agreement"] = {
        "share": share,
        "bf16_cuda_vs_fp32_cpu": agreement(predicted, cpu_predicted),
        "n": len(records),
        "fp32_cuda_questions_per_s": on_gpu["questions_per_s"],
    }
    print(f"  agreement CUDA/CPU (fp32): {share:.3f}", flush=True)
    if importlib.util.find_spec("bitsandbytes") is None:
        out["qlora"] = skipped("bitsandbytes is not installed (pip install 'tutorlm[gpu]')")
        out["bnb_int8_eval"] = skipped("bitsandbytes is not installed")
        return out
    qlora = recipe_for(model_dir, workdir, data, device, args.steps, f"qlora-{family}", True)
    out["qlora"], _ = train("sft", qlora, device)
    out["bnb_int8_eval"] = int8_row(final, records, device, cpu_predicted)
    return out


def int8_row(model_dir: Path, records, device: str, reference: list[int]) -> dict:
    """The final model loaded in bitsandbytes LLM.int8(), scored like the others."""
    from transformers import AutoModelForCausalLM

    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.models import load_tokenizer
    from tutorlm.quantize.methods import load_time_config

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=load_time_config("bnb-int8"), device_map=device
    )
    row, predicted = score(Scorer(model, load_tokenizer(model_dir)), records, device, "bnb int8")
    row["agreement_with_fp32_cpu"] = agreement(predicted, reference)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, required=True, help="write the JSON here")
    parser.add_argument("--steps", type=int, default=8, help="training steps of each stage")
    parser.add_argument("--questions", type=int, default=32, help="MCQA questions scored")
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from tutorlm.evaluate.ablation import notes_mcqa_records
    from tutorlm.hardware import resolve_device

    device = resolve_device(args.device)
    records = notes_mcqa_records()[: args.questions]
    started = time.perf_counter()
    report = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "steps": args.steps,
        "questions": len(records),
        "families": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for family in args.families.split(","):
            workdir = Path(scratch) / family
            workdir.mkdir()
            report["families"][family] = check_family(family, args, device, workdir, records)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"done in {report['seconds']} s; wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
