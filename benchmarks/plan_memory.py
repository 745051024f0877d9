"""The dry run's memory estimate against what training really holds, on this machine.

``tutorlm run RECIPE --dry-run`` prints an estimate of each training stage's peak
memory (``tutorlm.pipeline.plan.memory_estimate``). This script trains the same
stages for a few steps, each arm in its own process, with every row as long as
``max_length`` (so a step holds exactly ``batch x max_length`` tokens, the estimate's
assumption), and compares:

- measured: the process's peak resident memory at the end of the last training step
  (``VmHWM``, before the merged model is exported) minus its resident memory just
  before the model was loaded (interpreter, torch, the tokenizer);
- estimated: ``memory_estimate`` for the same shape, dtype, tokens and LoRA.

On a CPU the measurement includes what a GPU would not hold (the allocator's cached
blocks, autograd's bookkeeping) and lacks what a GPU would (the CUDA context); on a
GPU ``benchmarks/gpu_check.py`` reads ``torch.cuda.max_memory_allocated`` instead.

    .venv/bin/python benchmarks/plan_memory.py --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LORA = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
ARMS = {  # name: (stage, batch, max_length, activation checkpointing)
    "sft-b4-512": ("sft", 4, 512, False),
    "sft-b8-512": ("sft", 8, 512, False),
    "sft-b8-512-ckpt": ("sft", 8, 512, True),
    "dpo-b4-256": ("dpo", 4, 256, False),
}


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def long_rows(n: int) -> tuple[list[dict], list[dict]]:
    """Chats and pairs whose replies are far longer than any ``max_length`` used here."""
    words = " ".join(
        f"step {i}: multiply {i} by {i + 1} and carry the remainder." for i in range(300)
    )
    sft, prefs = [], []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Question {i}: explain the long multiplication."}]
        sft.append(
            {
                "id": f"s{i}",
                "source": "bench",
                "messages": [*prompt, {"role": "assistant", "content": words}],
            }
        )
        prefs.append(
            {
                "id": f"p{i}",
                "source": "bench",
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": words}],
                "rejected": [{"role": "assistant", "content": words.replace("carry", "drop")}],
            }
        )
    return sft, prefs


def arm_main(arm: str, workdir: Path, steps: int, model_path: str) -> None:
    """Train one arm; print its baseline, peak and the estimate as one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import TrainerCallback

    import tutorlm.train.dpo  # noqa: F401 -- imports done before the baseline is read
    import tutorlm.train.sft  # noqa: F401
    from tutorlm.hardware import device_dtype
    from tutorlm.pipeline.plan import memory_estimate, model_shape
    from tutorlm.recipe import recipe_from_dict

    stage, batch, length, checkpointing = ARMS[arm]
    baseline = vm_kib("VmRSS")
    peaks: list[int] = []

    class PeakAtLastStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            peaks.append(vm_kib("VmHWM"))

    section = {
        "per_device_train_batch_size": batch,
        "max_length": length,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "activation_checkpointing": checkpointing,
    }
    recipe = recipe_from_dict(
        {
            "name": "bench",
            "model": model_path,
            "run_root": str(workdir / arm),
            "device": "cpu",
            "train": {
                "lora": LORA,
                "dpo_start": "m0",
                "sft_train_file": str(workdir / "sft.jsonl"),
                "prefs_train_file": str(workdir / "dpo.jsonl"),
                "sft": section,
                "dpo": section,
            },
        }
    )
    if stage == "sft":
        tutorlm.train.sft.train_sft(recipe, callbacks=[PeakAtLastStep()])
    else:
        tutorlm.train.dpo.train_dpo(recipe, callbacks=[PeakAtLastStep()])
    dtype = str(device_dtype("auto", "cpu")).removeprefix("torch.")
    # DPO runs chosen and rejected in two passes (train.dpo_split_pairs, the default),
    # so a pass holds batch x max_length tokens, as for SFT: the plan's rule
    estimate = memory_estimate(
        model_shape(model_path),
        dtype=dtype,
        tokens=batch * length,
        lora_r=LORA["r"],
        lora_modules=LORA["target_modules"],
        checkpointing=checkpointing,
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "arm": arm,
                "dtype": dtype,
                "tokens_a_step": batch * length,
                "measured_mib": (peaks[-1] - baseline) / 1024,
                "estimate_mib": estimate["peak"] / 2**20,
                "estimate_parts_mib": {k: v / 2**20 for k, v in estimate.items() if k != "peak"},
            }
        ),
        flush=True,
    )


def run_arm(arm: str, workdir: Path, steps: int, model_path: str, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--arm", arm, "--workdir", str(workdir)]
    command += ["--steps", str(steps), "--model-path", model_path]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default=None, help="model spec (default: the bundled SmolLM2)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return arm_main(args.arm, args.workdir, args.steps, args.model_path)

    from tutorlm.models import resolve_model

    model_path = str(resolve_model(args.model or "bundled:smollm2-135m-instruct"))
    sft, prefs = long_rows(64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, records in (("sft.jsonl", sft), ("dpo.jsonl", prefs)):
            (workdir / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        for arm in args.arms.split(","):
            rows.append(run_arm(arm, workdir, args.steps, model_path, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| arm | dtype | tokens a step | estimate MiB | measured MiB | estimate / measured |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = r["estimate_mib"] / r["measured_mib"]
        print(
            f"| {r['arm']} | {r['dtype']} | {r['tokens_a_step']} | {r['estimate_mib']:.0f} | "
            f"{r['measured_mib']:.0f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
