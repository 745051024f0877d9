"""Training as separate processes: killed with SIGKILL and resumed, and two-process DDP.

Both run the real ``tutorlm train sft`` command in subprocesses on the tiny model.
DDP on CPUs: with accelerate 1.15, ``accelerate launch --cpu --num_processes 2``
starts a single process (its CPU launcher needs an MPI hostfile for more), while
``--multi_gpu --num_processes 2`` on a machine without GPUs starts two processes
that train with DDP over gloo; the test uses the latter and checks that there
really were two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from train_support import tiny_recipe_dict, write_run_data

REPO = Path(__file__).resolve().parents[1]


def write_recipe(tmp_path: Path, model_dir: Path, **sft) -> Path:
    recipe = tiny_recipe_dict(model_dir, tmp_path / "runs", sft=sft)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    write_run_data(tmp_path / "runs" / "tiny")
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def tutorlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "tutorlm", *args]


def test_sigkilled_run_resumes_to_the_same_final_step(tiny_model_dir, tmp_path):
    recipe = write_recipe(
        tmp_path, tiny_model_dir, max_steps=20, save_steps=5, per_device_train_batch_size=2
    )
    out = tmp_path / "runs" / "tiny" / "sft"
    first = subprocess.Popen(
        tutorlm("train", "sft", str(recipe)),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-5" / "tutorlm-complete.json").is_file():
        assert first.poll() is None, (
            f"the run ended before it could be killed:\n{first.stderr.read()}"
        )
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (out / "merged").exists()

    resumed = subprocess.run(
        tutorlm("train", "sft", str(recipe), "--resume"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 20
    assert summary["resumed_from_step"] >= 5
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))  # every step once: nothing redone from zero
    assert (out / "merged" / "model.safetensors").is_file()


def test_two_process_ddp_run_splits_the_data(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from tutorlm.train.data import prepare_sft

    recipe = write_recipe(
        tmp_path, tiny_model_dir, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=2
    )
    accelerate = Path(sys.executable).parent / "accelerate"
    launched = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "-m", "tutorlm"]
        + ["train", "sft", str(recipe)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    out = tmp_path / "runs" / "tiny" / "sft"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2
    # 8 rows, 2 per process and step: one epoch is 2 steps, and together they see every row once
    assert summary["global_step"] == 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = prepare_sft(tmp_path / "runs" / "tiny" / "data" / "sft.train.jsonl", tokenizer, 128).rows
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["num_tokens"] == sum(row["length"] for row in rows)
    assert (out / "merged" / "model.safetensors").is_file()
