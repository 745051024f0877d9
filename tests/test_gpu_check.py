"""benchmarks/gpu_check.py runs: on a CPU with every CUDA-only part skipped, and on a
GPU (where one is present) with CUDA and CPU scoring agreeing on the predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
STAGES = {"model", "sft", "dpo", "eval", "agreement", "qlora", "bnb_int8_eval"}


def run_check(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "TUTORLM_HOME": str(tmp_path / "home"), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(SCRIPT), "--out", str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_the_gpu_check_runs_on_a_cpu_and_skips_what_needs_cuda(tmp_path):
    report = run_check(tmp_path, "--device", "cpu", "--steps", "1", "--questions", "2")
    assert report["device"] == "cpu" and report["questions"] == 2
    assert set(report["families"]) == {"llama", "qwen2"}
    for family in report["families"].values():
        assert set(family) == STAGES
        for stage in ("sft", "dpo"):
            assert family[stage]["steps"] == 1 and family[stage]["tokens_per_s"] > 0
            assert family[stage]["peak"] == "peak_rss" and family[stage]["peak_mib"] > 0
        assert family["eval"]["n"] == 2 and family["eval"]["questions_per_s"] > 0
        for part in ("agreement", "qlora", "bnb_int8_eval"):
            assert "CUDA" in family[part]["skipped"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_and_cpu_scoring_agree_on_a_gpu(tmp_path):
    report = run_check(tmp_path, "--device", "cuda")
    for family in report["families"].values():
        assert family["sft"]["peak"] == "cuda_max_allocated"
        assert family["agreement"]["share"] >= 0.99
