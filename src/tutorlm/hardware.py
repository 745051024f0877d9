"""What the machine can do: the device, the dtype and the threads every stage uses.

Small models on CPUs are bound by the matmul kernel and by threads fighting for
cores, so these choices matter as much as any model setting: a CPU with native
bf16 instructions (``avx512_bf16`` or AMX) multiplies bf16 matrices several times
faster than fp32, and OpenMP threads that must share a core with another busy
process spin at every barrier. Training, evaluation, quantization, retrieval and
serving all decide these here, so two stages never disagree about the same machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from tutorlm.errors import TutorlmError

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The dtype names a setting may give; ``auto`` is :func:`auto_dtype`."""


class HardwareError(TutorlmError):
    """A device or dtype setting this machine cannot honour."""


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


DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"
"""The device settings a recipe or flag may give: ``auto``, ``cpu``, ``cuda``, ``cuda:N``."""


def auto_device() -> str:
    """``cuda`` where a CUDA GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(setting: str = "auto") -> str:
    """The torch device a stage runs its model on, from a device setting.

    ``auto`` is :func:`auto_device`; ``cpu``, ``cuda`` and ``cuda:N`` are taken as
    given once this machine can honour them. A CUDA request on a machine without
    that GPU fails here, before any model or data is loaded, rather than at the
    first tensor moved an hour into a run.

    Raises:
        HardwareError: a setting that is not a device, CUDA where no CUDA GPU is
            visible, or ``cuda:N`` past the visible GPUs.
    """
    import torch

    text = str(setting).strip().lower()
    if not re.match(DEVICE_PATTERN, text):
        raise HardwareError(f"device {setting!r} is not one of auto, cpu, cuda, cuda:N")
    if text == "auto":
        return auto_device()
    if text == "cpu":
        return text
    if not torch.cuda.is_available():
        raise HardwareError(
            f"device {setting!r} asks for a CUDA GPU, but torch sees none here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "use device: cpu or auto"
        )
    index = int(text.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise HardwareError(
            f"device {setting!r} asks for GPU {index}, but this machine has {count} "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return text


def launched_processes() -> tuple[int, int, int]:
    """``(count, index, local index)`` of this process among those a launcher started.

    ``accelerate launch`` and ``torchrun`` set ``WORLD_SIZE``, ``RANK`` and
    ``LOCAL_RANK`` in every process they start; a process started alone is
    ``(1, 0, 0)``.
    """
    count = int(os.environ.get("WORLD_SIZE", "1") or 1)
    index = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(index)) or 0)
    return max(1, count), index, local


def process_device(setting: str = "auto") -> str:
    """:func:`resolve_device` for one of several processes scoring side by side.

    Alone, a process gets :func:`resolve_device`'s answer. One of several launched
    processes takes the GPU of its local rank (``cuda:LOCAL_RANK``) where the
    setting is ``auto`` or ``cuda``, or the CPU where it resolves to ``cpu``, so
    that eight processes on eight GPUs do not all load onto ``cuda:0``.

    Raises:
        HardwareError: what :func:`resolve_device` raises; ``cuda:N`` under several
            processes (each would take the same GPU); a local rank past the GPUs.
    """
    device = resolve_device(setting)
    count, _, local = launched_processes()
    if count == 1 or device == "cpu":
        return device
    if ":" in str(setting):
        raise HardwareError(
            f"device {setting!r} names one GPU, but {count} processes were launched and "
            "each takes the GPU of its local rank; use device: auto or cuda"
        )
    return resolve_device(f"cuda:{local}")


def bf16_is_fast() -> bool:
    """bf16 pays here: a CUDA GPU that supports it, or a CPU with bf16 instructions."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def auto_dtype():
    """The dtype a model runs in when a setting says ``auto``.

    bf16 where it is fast (see :func:`bf16_is_fast`); fp16 on a CUDA GPU without
    bf16; fp32 elsewhere. fp16 is never chosen on a CPU: CPUs have no fast fp16 kernels.
    """
    import torch

    if bf16_is_fast():
        return torch.bfloat16
    return torch.float16 if torch.cuda.is_available() else torch.float32


def generation_dtype(device: str):
    """The dtype a model generates text in on ``device``.

    Half precision on a CUDA GPU (bf16 where supported, else fp16); fp32 on a CPU:
    decoding one token at a time is bound by reading weights, where a CPU's bf16
    kernels gain nothing over fp32 (``docs/benchmarks.md``, serving).
    """
    import torch

    if not str(device).startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_dtype(dtype):
    """A torch dtype from a name in :data:`DTYPES` (``None`` and torch dtypes pass through).

    Raises:
        HardwareError: a name that is not a dtype.
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise HardwareError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return auto_dtype() if dtype == "auto" else getattr(torch, dtype)


def device_dtype(dtype, device: str):
    """:func:`resolve_dtype` for a model that runs on ``device``.

    ``auto`` follows the device the model actually runs on, not the machine: on a
    CUDA device it is :func:`auto_dtype`; on the CPU, bf16 only where the CPU has
    bf16 instructions, even when a GPU is present but not used.
    """
    import torch

    if dtype != "auto":
        return resolve_dtype(dtype)
    if str(device).startswith("cuda"):
        return auto_dtype()
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def thread_count(setting: int | str = "auto") -> int:
    """Torch threads for this process.

    ``auto``: ``OMP_NUM_THREADS`` if the user set it; else the cores this process
    may run on, divided among the processes of this node (``LOCAL_WORLD_SIZE``,
    set by ``accelerate launch`` / ``torchrun``), less the cores other processes
    keep busy right now (:func:`busy_cores_elsewhere`): an OpenMP thread that shares
    its core with another busy process stalls every barrier of the whole team.
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

    The machine's busy CPU time (psutil) less this process's own, not the load
    average: that average trails by a minute, so a pipeline's next stage would
    count the stage that just finished in this same process as a stranger and
    halve its threads.
    """
    import time

    first = _cpu_sample()
    time.sleep(window)
    return cores_busy_between(first, _cpu_sample(), window)


def _cpu_sample() -> tuple[float, float]:
    """(seconds all CPUs were busy, seconds this process ran) since boot / its start."""
    import psutil

    machine = psutil.cpu_times()
    own = psutil.Process().cpu_times()
    busy = machine.user + machine.nice + machine.system
    busy += sum(getattr(machine, name, 0.0) for name in ("irq", "softirq", "steal"))
    return busy, own.user + own.system


def cores_busy_between(
    first: tuple[float, float], second: tuple[float, float], seconds: float
) -> float:
    """Cores busy with other processes between two samples ``seconds`` apart."""
    others = (second[0] - first[0]) - (second[1] - first[1])
    return max(0.0, others / seconds) if seconds > 0 else 0.0


def apply_threads(setting: int | str = "auto") -> int:
    """Set torch's intra-op threads; returns the count."""
    import torch

    count = thread_count(setting)
    torch.set_num_threads(count)
    return count


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device running out of memory (CUDA's own error, or the
    ``RuntimeError`` other backends and older torch raise with "out of memory")."""
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError | MemoryError) and "out of memory" in str(error).lower()


def halving_batches(owner, items, forward, *, alone: Callable[[BaseException], Exception]):
    """``(batch, forward(batch))`` over consecutive batches of ``items``, of
    ``owner.batch_size`` each, halving ``owner.batch_size`` on out-of-memory.

    The batch size that fits cannot be known before the first pass (it depends on the
    longest input, which callers put first), so, as lm-evaluation-harness and
    accelerate's ``find_executable_batch_size`` do, a batch that runs out of memory is
    retried at half the size, down to 1; the smaller size stays for the rest of the run
    (inputs only get shorter). Only ``forward`` is retried: a caller reads a batch's
    results after it succeeded, so nothing is counted twice. Scoring
    (``evaluate.batches.Batcher``) and bulk generation (``tutorlm.bulk``) batch this way.

    Raises:
        ``alone(error)``: one input alone does not fit.
    """
    first = 0
    while first < len(items):
        batch = items[first : first + owner.batch_size]
        try:
            outputs = forward(batch)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if owner.batch_size == 1:
                raise alone(error) from error
            owner.batch_size = max(1, owner.batch_size // 2)
            continue
        yield batch, outputs
        first += len(batch)


_ENGINE_THREADS: int | None = None


def reserve_cores_for_engine(threads: int | None = None) -> None:
    """In a serving process, before torch loads: every thread computes on one core but
    the engine's, which gets them all (:func:`engine_threads`).

    GNU OpenMP keeps a pool of threads per thread that ever ran a parallel op, and once
    the pools hold more threads than there are cores it stops letting idle ones spin
    and puts them to sleep after every op. A model loaded on the main thread and then
    decoded on the engine's thread thus decodes ~45 % slower (31 against 55 tokens/s
    on the demo's int8 model on 2 cores, docs/benchmarks.md). With
    ``OMP_NUM_THREADS=1`` no other thread forms a pool. No effect once torch is
    imported.

    Args:
        threads: the engine's threads; default :func:`thread_count` (which reads a
            user's ``OMP_NUM_THREADS``).
    """
    global _ENGINE_THREADS
    import sys

    if "torch" in sys.modules:
        return
    _ENGINE_THREADS = threads or thread_count()
    os.environ["OMP_NUM_THREADS"] = "1"


def other_threads_to_one_core() -> None:
    """Once the engine's thread has set its own threads: threads that start torch work
    from now on use one core (torch hands a new thread the last count set anywhere).
    Only in a process :func:`reserve_cores_for_engine` prepared."""
    if _ENGINE_THREADS is None:
        return
    import torch

    torch.set_num_threads(1)


def engine_threads() -> int:
    """Torch threads for the thread that decodes: the cores reserved by
    :func:`reserve_cores_for_engine`, else this thread's own setting."""
    if _ENGINE_THREADS is not None:
        return _ENGINE_THREADS
    import torch

    return torch.get_num_threads()
