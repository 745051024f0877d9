"""Batches of token rows through a causal LM: the scorer's forward passes.

:class:`Batcher` pads, runs and reads; a :class:`Job` is one row whose last
``keep`` next-token distributions are read, a :class:`Group` is one context with
several long continuations (scored on the context's KV cache), and
:class:`NextTokens` hands a reader the log-probabilities it asks for, with the
scored tokens' logits in float32 where the model runs in bf16 or fp16.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from tutorlm.errors import TutorlmError
from tutorlm.evaluate.parallel import ALONE, Processes
from tutorlm.hardware import halving_batches


class BatchMemoryError(TutorlmError, RuntimeError):
    """One input alone does not fit in the device's memory, even at batch size 1."""


@dataclass
class Job:
    """One forward pass input: read the next-token distributions at the last ``keep`` positions."""

    input_ids: list[int]
    keep: int
    read: Callable  # called with the NextTokens of this job's last ``keep`` positions


class NextTokens:
    """Next-token log-probabilities of one row at its last ``n`` positions.

    ``pick`` returns the log-probabilities of given tokens with their logits in
    float32: recomputed from the head's input where the model runs in reduced
    precision, so that candidates read at one position never tie by rounding.
    """

    def __init__(self, logits, hidden, head):
        import torch

        self.logits = logits  # (n, V) as the model computed them
        self.lse = torch.logsumexp(logits.float(), dim=-1)  # (n,)
        self.hidden = hidden  # (n, H) input of the output layer, or None
        self.head = head

    def __len__(self) -> int:
        return self.logits.shape[0]

    def pick(self, positions, tokens):
        """float64 log-probabilities of ``tokens[i]`` at position ``positions[i]``."""
        import torch

        positions = torch.as_tensor(positions, device=self.logits.device)
        tokens = torch.as_tensor(tokens, device=self.logits.device)
        if self.hidden is None:
            chosen = self.logits[positions, tokens].float()
        else:
            weight = self.head.weight[tokens].float()  # (k, H)
            chosen = (self.hidden[positions].float() * weight).sum(-1)
            if self.head.bias is not None:
                chosen = chosen + self.head.bias[tokens].float()
        return (chosen - self.lse[positions]).double()

    def greedy(self):
        """The most likely next token at each position, (n,)."""
        return self.logits.argmax(dim=-1)


@dataclass
class Group:
    """Continuations of more than one token that share a context: scored from one
    pass over the context and its KV cache."""

    context: list[int]
    items: list[tuple[Callable, list[int]]]  # (reader, continuation tokens)


def accepts(function, name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name``."""
    parameters = inspect.signature(function).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class Batcher:
    """Runs a causal LM over batches of token rows for the scorer.

    Rows are left-padded with explicit position ids (a padded row computes what it
    would alone), logits are computed only at the positions read, and continuations
    that share a context run on one KV cache of it. Under several ``processes`` each
    runs the batches dealt to it (``Processes.deal``); they are cut at ``batch_size``
    as given here, the same on every process even after one of them halved its own.
    """

    def __init__(self, model, *, pad_token_id: int, batch_size: int, processes: Processes = ALONE):
        self.model = model
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.deal_size = batch_size
        self.processes = processes
        forward = model.forward
        self.keeps_logits = accepts(forward, "logits_to_keep")
        self.takes_positions = accepts(forward, "position_ids")
        self.reuses_cache = self.takes_positions and accepts(forward, "past_key_values")
        self.float_head = _float_head(model)

    @property
    def device(self):
        """Where inputs must go: the device of the model's input embedding (see
        :func:`input_device`)."""
        return input_device(self.model)

    def deal(self, items: list) -> list:
        """The items of a pass this process runs (all of them when it runs alone)."""
        return self.processes.deal(items, self.deal_size)

    def dealt(self, total: int) -> int:
        """How many of a pass's ``total`` inputs this process runs."""
        return self.processes.dealt(total, self.deal_size)

    def pad(self, rows: list[list[int]], *, left: bool = True):
        """Pad rows into ``(B, T)`` ids and an attention mask on the model's device
        (on the left by default; on the right for continuations after a KV cache)."""
        import torch

        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[r, span] = torch.tensor(row, dtype=torch.long)
            mask[r, span] = 1
        device = self.device
        return ids.to(device), mask.to(device)

    def batches(self, items: list, forward: Callable):
        """``(batch, forward(batch))`` over consecutive batches of ``items``, halving the
        batch size on out-of-memory until a batch fits.

        A batch size that fits the machine cannot be known before the first pass (it
        depends on the longest input, which comes first), so, as lm-evaluation-harness
        and accelerate's ``find_executable_batch_size`` do, a batch that runs out of
        memory is retried at half the size, down to 1; the smaller size stays for the
        rest of the run (inputs only get shorter). Only ``forward`` is retried: the
        caller reads a batch's results after it succeeded, so nothing is counted twice.

        Raises:
            BatchMemoryError: one input alone does not fit.
        """

        def alone(error: BaseException) -> BatchMemoryError:
            return BatchMemoryError(
                f"out of memory on one input alone on {self.device} ({error}); "
                "lower eval.perplexity_window, the input length or the new tokens, use a "
                "smaller dtype, or run on a device with more memory"
            )

        yield from halving_batches(self, items, forward, alone=alone)

    def run(self, jobs: list[Job], bar) -> None:
        """Run jobs longest first in batches of neighbours, handing each its log-probs."""
        import torch

        def forward(batch: list[Job]):
            keep = max(job.keep for job in batch)
            return keep, self._forward([job.input_ids for job in batch], keep)

        jobs = self.deal(sorted(jobs, key=lambda job: -len(job.input_ids)))
        with torch.inference_mode():
            for batch, (keep, (logits, hidden, _, _)) in self.batches(jobs, forward):
                for row, job in enumerate(batch):
                    rows = slice(keep - job.keep, keep)
                    states = None if hidden is None else hidden[row, rows]
                    job.read(NextTokens(logits[row, rows], states, self.float_head))
                bar.update(len(batch))

    def _forward(self, rows: list[list[int]], keep: int, **extra):
        """One left-padded pass: logits at the last ``keep`` positions (B, keep, V), the
        output layer's input there (B, keep, H) where logits need float32 recomputing
        (else None), the attention mask, and the model's output (for its KV cache)."""
        input_ids, mask = self.pad(rows)
        kwargs = {"input_ids": input_ids, "attention_mask": mask, **extra}
        if self.takes_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        output, hidden = self._call(kwargs, keep)
        return output.logits[:, -keep:], hidden, mask, output

    def _call(self, kwargs: dict, keep: int):
        """The model's output for ``kwargs`` with logits at the last ``keep`` positions,
        and the output layer's input there (None where logits are float32 already)."""
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        head, captured, hook = self.float_head, [], None
        if head is not None:
            hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        try:
            output = self.model(**kwargs)
        finally:
            if hook is not None:
                hook.remove()
        hidden = captured[-1][:, -keep:] if captured else None
        return output, hidden

    def run_groups(self, groups: list[Group], bar) -> None:
        """Score several long continuations of one context from one pass over the context.

        A batch of contexts (left-padded) runs once with a KV cache; the cache rows
        are repeated for each continuation, and the continuations (right-padded, at
        positions after their context) run on top of it. The first token of each
        continuation is read from the context pass, the others from the second.
        """
        import torch

        def forward(batch: list[Group]):
            first_logits, first_hidden, mask, context_out = self._forward(
                [group.context for group in batch], 1, use_cache=True
            )
            rows = [(b, read, tokens) for b, g in enumerate(batch) for read, tokens in g.items]
            owners = torch.tensor([b for b, _, _ in rows])
            cache = context_out.past_key_values
            cache.batch_select_indices(owners)  # CPU indices: a dispatched cache spans devices
            owners = owners.to(mask.device)
            ids, tail_mask = self.pad([tokens[:-1] for _, _, tokens in rows], left=False)
            width = ids.shape[1]
            starts = mask.sum(-1)[owners][:, None]
            output, hidden = self._call(
                {
                    "input_ids": ids,
                    "attention_mask": torch.cat([mask[owners], tail_mask], dim=-1),
                    "position_ids": starts + torch.arange(width, device=ids.device),
                    "past_key_values": cache,
                },
                width,
            )
            return rows, first_logits, first_hidden, output, hidden

        groups = self.deal(sorted(groups, key=lambda group: -len(group.context)))
        with torch.inference_mode():
            for batch, outputs in self.batches(groups, forward):
                rows, first_logits, first_hidden, output, hidden = outputs
                for r, (b, read, tokens) in enumerate(rows):
                    n = len(tokens)
                    logits = torch.cat([first_logits[b], output.logits[r, : n - 1]])
                    states = None
                    if hidden is not None:
                        states = torch.cat([first_hidden[b], hidden[r, : n - 1]])
                    read(NextTokens(logits, states, self.float_head))
                bar.update(len(batch))


def input_device(model):
    """The device a model's inputs go to: its input embedding's.

    A model spread over devices by accelerate (``device_map``) keeps a module that
    was offloaded to the CPU or disk on the ``meta`` device between passes and runs
    it on the first GPU of its map (its "main device", the CPU where it has none):
    inputs go there. A model on one device takes them where its weights are.
    """
    import torch

    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        gpus = [d for d in device_map.values() if d not in ("cpu", "disk", "meta")]
        if not gpus:
            return torch.device("cpu")
        return torch.device(f"cuda:{gpus[0]}" if isinstance(gpus[0], int) else gpus[0])
    return next(model.parameters()).device


def _float_head(model):
    """The output layer when its logits need recomputing in float32, else None.

    None too where the layer is offloaded (its weights are on ``meta`` between
    passes): its logits are then read as the model computed them.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.weight.dtype == torch.float32:
        return None
    return None if head.weight.device.type == "meta" else head
