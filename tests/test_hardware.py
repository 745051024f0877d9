"""The hardware layer: CPU flags decide bf16, threads share cores, busy cores are others'."""

from __future__ import annotations

import pytest

from tutorlm.hardware import (
    HardwareError,
    cores_busy_between,
    cpu_flags,
    cpu_has_fast_bf16,
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
