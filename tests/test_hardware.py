"""The hardware layer: CPU flags decide bf16, threads share cores, busy cores are others'."""

from __future__ import annotations

import pytest

from tutorlm.hardware import (
    HardwareError,
    cores_busy_between,
    cpu_flags,
    cpu_has_fast_bf16,
    resolve_device,
    resolve_dtype,
    thread_count,
)


def test_cpu_flags_decide_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_has_fast_bf16(cpu_flags(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16\n")
    assert cpu_has_fast_bf16(cpu_flags(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_fast_bf16(cpu_flags(info))
    assert cpu_flags(tmp_path / "missing") == set()


def test_thread_count_shares_cores_and_leaves_busy_ones(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    busy = {"cores": 0.3}
    monkeypatch.setattr("tutorlm.hardware.busy_cores_elsewhere", lambda: busy["cores"])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert thread_count("auto") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert thread_count("auto") == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert thread_count("auto") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    busy["cores"] = 2.6  # three cores busy elsewhere
    assert thread_count("auto") == 1
    busy["cores"] = 14.0
    assert thread_count("auto") == 1
    busy["cores"] = 1.4
    assert thread_count("auto") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    busy["cores"] = 0.0
    assert thread_count("auto") == 3
    assert thread_count(5) == 5
    assert thread_count(0) == 1


def test_busy_cores_count_other_processes_not_this_one():
    # samples are (seconds the machine's CPUs were busy, seconds this process ran)
    first = (1000.0, 100.0)
    # over 2 s the machine was busy 3 CPU-seconds, 1 of them this process's own
    assert cores_busy_between(first, (1003.0, 101.0), 2.0) == 1.0
    # all busy time was this process's: nothing elsewhere
    assert cores_busy_between(first, (1002.0, 102.0), 2.0) == 0.0
    # a process sample ahead of the machine's (sampling skew) is clamped to zero
    assert cores_busy_between(first, (1001.0, 102.5), 0.5) == 0.0
    # two whole cores of others over a quarter second
    assert cores_busy_between(first, (1000.75, 100.25), 0.25) == 2.0
    assert cores_busy_between(first, (1010.0, 100.0), 0.0) == 0.0


def test_resolve_dtype_names_and_auto(monkeypatch):
    import torch

    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(None) is None
    assert resolve_dtype(torch.float16) is torch.float16
    monkeypatch.setattr("tutorlm.hardware.bf16_is_fast", lambda: True)
    assert resolve_dtype("auto") is torch.bfloat16
    monkeypatch.setattr("tutorlm.hardware.bf16_is_fast", lambda: False)
    expected = torch.float16 if torch.cuda.is_available() else torch.float32
    assert resolve_dtype("auto") is expected
    with pytest.raises(HardwareError, match="dtype 'fp8' is not one of auto, float32"):
        resolve_dtype("fp8")


def _gpus(monkeypatch, count: int) -> None:
    """Make torch see ``count`` CUDA GPUs (none: no CUDA at all)."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: count > 0)
    monkeypatch.setattr("torch.cuda.device_count", lambda: count)


def test_resolve_device_auto_is_the_gpu_when_there_is_one(monkeypatch):
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == "cuda"
    _gpus(monkeypatch, 0)
    assert resolve_device("auto") == "cpu"
    assert resolve_device() == "cpu"


def test_resolve_device_takes_cpu_and_existing_gpus_as_given(monkeypatch):
    _gpus(monkeypatch, 2)
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    assert resolve_device("CUDA:1") == "cuda:1"
    _gpus(monkeypatch, 0)
    assert resolve_device("cpu") == "cpu"


def test_resolve_device_refuses_cuda_without_a_gpu(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(
        HardwareError, match="device 'cuda' asks for a CUDA GPU, but torch sees none"
    ):
        resolve_device("cuda")
    with pytest.raises(HardwareError, match="device 'cuda:0' asks for a CUDA GPU"):
        resolve_device("cuda:0")


def test_resolve_device_refuses_a_gpu_past_the_count(monkeypatch):
    _gpus(monkeypatch, 2)
    with pytest.raises(
        HardwareError, match=r"asks for GPU 2, but this machine has 2 \(cuda:0 to cuda:1\)"
    ):
        resolve_device("cuda:2")


@pytest.mark.parametrize("setting", ["gpu", "mps", "cuda:", "cuda:x", "", "cpu:0"])
def test_resolve_device_names_the_allowed_values(monkeypatch, setting):
    _gpus(monkeypatch, 1)
    with pytest.raises(HardwareError, match="is not one of auto, cpu, cuda, cuda:N"):
        resolve_device(setting)


def test_a_serving_process_keeps_the_cores_for_the_engine_thread():
    """Before torch loads, every thread but the engine's is held to one core (no idle
    OpenMP pool to slow the engine's); the engine's thread gets them all."""
    import os
    import subprocess
    import sys

    script = (
        "import os, threading\n"
        "from tutorlm.hardware import engine_threads, other_threads_to_one_core\n"
        "from tutorlm.hardware import reserve_cores_for_engine\n"
        "reserve_cores_for_engine(3)\n"
        "import torch\n"
        "seen, started, later = [], threading.Event(), threading.Event()\n"
        "def engine():\n"
        "    torch.set_num_threads(engine_threads())\n"
        "    seen.append(torch.get_num_threads()); started.set(); later.wait()\n"
        "    seen.append(torch.get_num_threads())\n"
        "worker = threading.Thread(target=engine)\n"
        "worker.start(); started.wait()\n"
        "other_threads_to_one_core()\n"
        "late = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))\n"
        "late.start(); late.join(); later.set(); worker.join()\n"
        "print(os.environ['OMP_NUM_THREADS'], engine_threads(), *seen)\n"
        "reserve_cores_for_engine(5)\n"  # torch is loaded: too late, nothing changes
        "print(engine_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    # the environment, the engine's threads, what its thread set, what a later thread
    # gets, what the engine's thread still has once the others went to one core
    assert done.stdout.split("\n")[:2] == ["1 3 3 1 3", "3"]
