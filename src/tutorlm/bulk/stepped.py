"""Greedy bulk generation on a CPU through the serving engine's decoder and schedule.

``tutorlm serve`` decodes a Llama-family model on a CPU with
:class:`tutorlm.decoder.StepDecoder`, a request at a time or many together. When the
evaluation, the samples stage or the quantize stage's tutor rows generate greedily
with the same model on a CPU, they go through the same decoder and the same
scheduling rule (:class:`tutorlm.decoder.Scheduler`), so the replies they grade are the
replies the tutor gives, token for token for the packed int8/int4 copies. It is also
continuous batching: a finished reply's slot takes the next prompt at once, instead
of the batch waiting for its longest reply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tutorlm.decoder import Reply, Scheduler, StepDecoder, unsupported_reason


class _Answer(Reply):
    """One prompt's greedy answer: its tokens until the end token, a stop string or
    its budget."""

    def __init__(
        self, index: int, prompt_ids: list[int], budget: int, end_id: int | None, stop_check
    ):
        super().__init__(prompt_ids)
        self.index = index
        self.budget, self.end_id, self.stop_check = budget, end_id, stop_check
        self.tokens: list[int] = []
        self.done = False

    def accept(self, token: int) -> None:
        self.tokens.append(token)
        self.done = (
            token == self.end_id
            or len(self.tokens) >= self.budget
            or (self.stop_check is not None and self.stop_check(self.tokens))
        )

    @property
    def finished(self) -> bool:
        return self.done


class SteppedGreedy:
    """Greedy generation of many prompts on one model through the step decoder.

    Args:
        model: a model :func:`tutorlm.decoder.unsupported_reason` accepts.
        slots: prompts in flight at once.
    """

    def __init__(self, model, slots: int):
        self.decoder = StepDecoder(model, slots=slots, max_len=1)
        self.slots = slots

    @staticmethod
    def fits(model) -> bool:
        """Whether the decoder runs this model (a CPU Llama-family model, merged)."""
        return unsupported_reason(model) is None

    def generate(
        self,
        encoded: Sequence[list[int]],
        budgets: Sequence[int],
        *,
        end_id: int | None,
        stop_check: Callable[[list[int]], bool] | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[int]]:
        """Each prompt's new tokens (its end token included when it came).

        Args:
            encoded: the prompts' ids.
            budgets: new tokens per prompt at most (cut to the decoder's room).
            end_id: the token that ends an answer.
            stop_check: called with an answer's tokens after each one; True ends it.
            on_done: called with each prompt's index as its answer ends (progress).
        """
        longest = max(len(ids) + budget for ids, budget in zip(encoded, budgets, strict=True))
        self.decoder.reserve(self.slots, longest)
        scheduler = Scheduler(self.decoder)
        answers = [
            _Answer(i, list(ids), min(budget, scheduler.room(ids)), end_id, stop_check)
            for i, (ids, budget) in enumerate(zip(encoded, budgets, strict=True))
        ]
        waiting = list(reversed(answers))
        while waiting or scheduler.replies:
            while waiting and scheduler.has_room:
                scheduler.add(waiting.pop())
            for answer in scheduler.step():
                if on_done is not None:
                    on_done(answer.index)
        return [answer.tokens for answer in answers]
