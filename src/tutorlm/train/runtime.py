"""What the machine can do for training: bf16, threads, QLoRA.

Small models on CPUs are bound by the matmul kernel and by threads fighting for
cores, so these choices matter as much as any model setting: a CPU with
``avx512_bf16`` (or AMX) multiplies bf16 matrices about 5x faster than fp32, and
two processes with two threads each on two cores run slower than with one each.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tutorlm.errors import TutorlmError

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class TrainError(TutorlmError):
    """A training run that cannot start or finish, with what to do about it."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags of the first CPU listed in ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (avx512_bf16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def bf16_is_fast() -> bool:
    """bf16 mixed precision pays here: a CUDA GPU that supports it, or such a CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def thread_count(setting: int | str = "auto") -> int:
    """Torch threads for this process.

    ``auto``: ``OMP_NUM_THREADS`` if the user set it; else the cores this process
    may run on, divided among the processes of this node (``LOCAL_WORLD_SIZE``,
    set by ``accelerate launch`` / ``torchrun``), less the cores other processes
    keep busy right now (:func:`busy_cores_elsewhere`): OpenMP threads that must
    share a core with another process spin at every barrier, and on this 2-core
    machine under load one thread ran a training step 4x faster than two.
    """
    if setting != "auto":
        return max(1, int(setting))
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    busy = int(busy_cores_elsewhere() + 0.5)
    return max(1, min(cores // local_processes, cores - busy))


def busy_cores_elsewhere(window: float = 0.25) -> float:
    """Cores other processes kept busy over the last ``window`` seconds.

    Measured from ``/proc/stat`` less this process's own CPU time, not from the
    load average: that average trails by a minute, so a pipeline's next stage
    would count the stage that just finished in this same process as a stranger
    and halve its threads. Elsewhere (no ``/proc``) the 1-minute load average.
    """
    import time

    first = cpu_times()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(window)
    second = cpu_times()
    return cores_busy_between(first, second) if second is not None else 0.0


def cpu_times(
    stat: Path = Path("/proc/stat"), own: Path = Path("/proc/self/stat")
) -> tuple[int, int, int, int] | None:
    """(busy jiffies of all CPUs, all jiffies, CPU count, this process's jiffies)."""
    try:
        lines = stat.read_text().splitlines()
        own_fields = own.read_text().rpartition(")")[2].split()
    except OSError:
        return None
    fields = [int(value) for value in lines[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    count = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    # after the ")" of the command name: state is field 0, utime 11, stime 12
    mine = int(own_fields[11]) + int(own_fields[12])
    return busy, busy + idle + iowait, max(1, count), mine


def cores_busy_between(first: tuple, second: tuple) -> float:
    """Cores busy with other processes between two :func:`cpu_times` samples."""
    busy = (second[0] - first[0]) - (second[3] - first[3])
    elapsed_per_cpu = (second[1] - first[1]) / second[2]
    return max(0.0, busy / elapsed_per_cpu) if elapsed_per_cpu > 0 else 0.0


def apply_threads(setting: int | str = "auto") -> int:
    """Set torch's intra-op threads; returns the count."""
    import torch

    count = thread_count(setting)
    torch.set_num_threads(count)
    return count


def require_qlora_support() -> None:
    """Fail with what is missing unless 4-bit QLoRA can run here.

    Raises:
        TrainError: without a CUDA GPU, or without bitsandbytes.
    """
    import torch

    if not torch.cuda.is_available():
        raise TrainError(
            "train.qlora=true needs a CUDA GPU (bitsandbytes' 4-bit training kernels); "
            "this machine has none. Set train.qlora=false to train LoRA on the full-precision "
            "base (bf16 where the CPU supports it)."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError(
            "train.qlora=true needs the bitsandbytes package: pip install bitsandbytes "
            "(or set train.qlora=false)."
        )


def qlora_quantization_config():
    """The 4-bit NF4 config of QLoRA (double quantization, bf16 compute)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
