"""Data-parallel evaluation: several processes, one model each, a share of every pass each.

Under ``accelerate launch`` or ``torchrun`` every process loads the model on its
own device (``cuda:LOCAL_RANK``, or the CPU; see ``tutorlm.hardware.process_device``)
and the scorer deals the batches of each forward pass out among the processes.
The inputs of a pass are sorted by length and cut into batches of
``eval.batch_size`` exactly as one process cuts them, and batch ``b`` goes to
process ``b % count``; each batch therefore holds the same rows, padded the same
way, as in a one-process run, and computes the same numbers. The readings are then
gathered, so every process holds every item's result in item order and computes
the same predictions, metrics and bootstrap intervals from them; only the main
process writes files and prints.

Every process must make the same collective calls in the same order: the scorer
gathers after every pass, even a pass with nothing dealt to this process, and
everything that decides whether a pass runs (the close calls re-scored in float32,
the reward's reference pass) is computed from gathered results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tutorlm.errors import TutorlmError


class ParallelError(TutorlmError):
    """A launch the evaluation cannot run as asked."""


@dataclass(frozen=True)
class Processes:
    """The processes scoring together: how many, and which one this is."""

    count: int = 1
    index: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes files and prints."""
        return self.index == 0

    def deal(self, items: Sequence, batch_size: int) -> list:
        """This process's items: consecutive batches of ``batch_size``, dealt in turn.

        Batch ``b`` (items ``b * batch_size`` onwards) goes to process ``b % count``,
        so the long inputs, which come first, are spread over every process.
        """
        if self.count == 1:
            return list(items)
        stride = self.count * batch_size
        return [
            item
            for start in range(self.index * batch_size, len(items), stride)
            for item in items[start : start + batch_size]
        ]

    def dealt(self, total: int, batch_size: int) -> int:
        """How many of ``total`` items :meth:`deal` gives this process (for its progress bar)."""
        return len(self.deal(range(total), batch_size))

    def gather(self, value) -> list:
        """``value`` of every process, in process order, on every process."""
        if self.count == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def fill(self, results: list) -> list:
        """Complete ``results``, whose entries are None where another process scored
        the item, with the other processes' entries; returns the same list."""
        if self.count == 1:
            return results
        own = [(index, value) for index, value in enumerate(results) if value is not None]
        for part in self.gather(own):
            for index, value in part:
                results[index] = value
        return results

    def wait(self) -> None:
        """Return once every process got here (the main process's files are written)."""
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


ALONE = Processes()
"""One process scoring everything."""


def join_processes(device: str) -> Processes:
    """This process's place among those a launcher started, joining their process group.

    A process started alone gets :data:`ALONE` and nothing is initialised. Under a
    launcher, accelerate's ``PartialState`` starts ``torch.distributed`` (gloo where
    the model runs on the CPU, NCCL on GPUs); a state that training in this same
    process already started is reused.

    Args:
        device: where this process's model runs (``tutorlm.hardware.process_device``).

    Raises:
        ParallelError: the launcher's processes did not form one group.
    """
    from tutorlm.hardware import launched_processes

    count, index, _ = launched_processes()
    if count == 1:
        return ALONE
    from accelerate import PartialState

    state = PartialState(cpu=str(device) == "cpu")
    if state.num_processes != count or state.process_index != index:
        raise ParallelError(
            f"{count} processes were launched (WORLD_SIZE) but torch.distributed joined "
            f"{state.num_processes} (backend {state.backend}); launch with "
            "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`"
        )
    return Processes(state.num_processes, state.process_index)
