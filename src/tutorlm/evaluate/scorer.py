"""The one place that scores text with a model for evaluation: log-likelihoods.

Every scored metric of tutorlm (MCQA, reward accuracy, choice completion,
perplexity) goes through :class:`Scorer`, so that tokenization, padding, precision
and batching are decided once; the generating tasks decode through ``tutorlm.bulk``
on the scorer's model. The interface is lm-evaluation-harness's scoring methods
(``loglikelihood``, ``loglikelihood_rolling``), and the
tokenization follows lm-evaluation-harness's ``HFLM`` exactly, so that the same
requests give the same numbers:

- a context's trailing whitespace moves to the start of the continuation;
- the continuation's tokens are ``encode(context + continuation)`` minus the first
  ``len(encode(context))`` tokens (the tokenizer sees the joined string, as it
  would when the model wrote it);
- no special tokens are added; an empty context is replaced by one prefix token
  (BOS, else EOS);
- over-long inputs are cut from the left to the model's maximum length.

Where it is faster than a straightforward implementation:

- *shared-context fast path*: requests whose continuation is one token and whose
  context is the same (" A".." D" after an MCQA prompt) need one forward pass of
  the context and one read of the next-token distribution;
- *shared prefix*: longer continuations of one context (the four answers of a
  question scored in full, chosen and rejected answers to one prompt) run on one
  KV cache of the context instead of re-reading it once per continuation;
- *logits only where read*: the vocabulary projection (a fifth of a small model's
  FLOPs) and the log-softmax run only at the positions a request scores;
- *length bucketing*: inputs are sorted by length and batched with their
  neighbours, so little compute goes to padding;
- *left padding with explicit position ids*, so that a padded row computes exactly
  what it would alone (tests check batch 1 vs 8 and padded vs unpadded);
- *several processes* (``accelerate launch``, ``torchrun``): each runs the batches
  dealt to it and the results are gathered in request order, identical to one
  process's (``tutorlm.evaluate.parallel``).

Precision: in bf16 a logit near 20 is rounded to a multiple of 0.125, so the four
letters of an MCQA question often tie exactly and the tie goes to "A". The logits of
the tokens a request scores are therefore recomputed in float32 from the model's
last hidden state (one dot product per scored token); only the softmax normaliser,
which all candidates at one position share, comes from the reduced-precision logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tutorlm.errors import TutorlmError
from tutorlm.evaluate.batches import Batcher, Group, Job, NextTokens
from tutorlm.evaluate.parallel import ALONE, Processes
from tutorlm.hardware import DTYPES, device_dtype, resolve_device, resolve_dtype

__all__ = [
    "DTYPES",
    "LoglikelihoodResult",
    "RollingResult",
    "Scorer",
    "ScorerError",
    "resolve_dtype",
]


class ScorerError(TutorlmError, ValueError):
    """A request the scorer cannot score, named by its index and field."""


@dataclass(frozen=True)
class LoglikelihoodResult:
    """log P(continuation | context) summed over the continuation's tokens."""

    logprob: float
    """Sum of the continuation tokens' natural-log probabilities."""
    is_greedy: bool
    """Whether greedy decoding from the context would produce exactly these tokens."""
    n_tokens: int
    """Number of continuation tokens scored."""


@dataclass(frozen=True)
class RollingResult:
    """The log-likelihood of a whole text, scored with a sliding window."""

    logprob: float
    """Sum of the natural-log probabilities of every token of the text."""
    n_tokens: int
    """Number of tokens scored (all tokens of the text)."""


class Scorer:
    """Batched log-likelihood scoring and generation for one causal LM.

    Args:
        model: a causal LM (transformers, PEFT, or anything with the same
            ``forward(input_ids, attention_mask, ...) -> .logits``).
        tokenizer: its tokenizer.
        batch_size: inputs per forward pass at most; halved for the rest of the run
            when a pass runs out of memory (see ``Batcher.batches``).
        dtype: cast the model to this dtype first (in place): a torch dtype, a
            name from ``tutorlm.hardware.DTYPES`` (``auto``: bf16 where it is fast), or None to keep it as it is.
        max_length: longest input; default the model's ``max_position_embeddings``.
        progress: show a progress bar with items per second.
        processes: the processes that score together, each its share of every
            pass (``tutorlm.evaluate.parallel``); default this one alone.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        dtype=None,
        max_length: int | None = None,
        progress: bool = False,
        processes: Processes = ALONE,
    ):
        if batch_size < 1:
            raise ScorerError(f"batch_size must be >= 1, got {batch_size}")
        dtype = resolve_dtype(dtype)
        if dtype is not None:
            model = model.to(dtype)
        self.model = model.eval() if hasattr(model, "eval") else model
        self.tokenizer = tokenizer
        self.progress = progress
        config = getattr(model, "config", None)
        self.max_length = max_length or getattr(config, "max_position_embeddings", None) or 2048
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self.processes = processes
        self.batcher = Batcher(
            self.model, pad_token_id=self.pad_token_id, batch_size=batch_size, processes=processes
        )
        self.loaded_with: dict | None = None  # from_spec's device map, to load siblings alike

    @classmethod
    def from_spec(
        cls,
        spec,
        *,
        dtype="auto",
        device: str = "auto",
        online: bool | None = None,
        device_map: str | None = None,
        max_memory: dict | None = None,
        **kwargs,
    ) -> Scorer:
        """Load a model spec (bundled name, directory, hub id) onto ``device`` and wrap it.

        ``device`` is a setting for ``tutorlm.hardware.resolve_device`` (checked before
        the weights load); ``dtype`` ``auto`` follows that device (``device_dtype``).
        ``device_map="auto"`` spreads a model too large for one GPU over every GPU
        (then CPU memory, then disk; ``max_memory`` caps each) with accelerate's
        big-model dispatch instead; ``device`` must then be ``auto`` or ``cuda``.
        """
        from tutorlm.models import load_model

        if device_map is None:
            device = resolve_device(device)
            dtype = device_dtype(dtype, device)
            model, tokenizer = load_model(spec, dtype=dtype, online=online, device=device)
            return cls(model, tokenizer, **kwargs)
        if str(device) not in ("auto", "cuda"):
            raise ScorerError(
                f"device_map {device_map!r} places the model on every GPU itself; it cannot "
                f"be combined with device {device!r} (use device: auto)"
            )
        dtype = device_dtype(dtype, resolve_device(device))
        placement = {"device_map": device_map, "max_memory": max_memory}
        model, tokenizer = load_model(spec, dtype=dtype, online=online, **placement)
        scorer = cls(model, tokenizer, **kwargs)
        scorer.loaded_with = placement
        return scorer

    def sibling(self, spec, *, dtype) -> Scorer:
        """Another model (the float32 re-check, the reward's reference) loaded as this one
        was: on its device or with its device map, with its processes and progress
        bars, starting at the batch size this one got down to."""
        placement = self.loaded_with or {"device": self.device}
        other = Scorer.from_spec(
            spec,
            dtype=dtype,
            batch_size=self.batcher.deal_size,  # batches are dealt at the size asked for
            progress=self.progress,
            processes=self.processes,
            **placement,
        )
        other.batcher.batch_size = self.batch_size
        return other

    @property
    def device(self) -> str:
        """Where the model takes its inputs (``cpu``, ``cuda:0``): the device of its
        weights, or of its input embedding where it is spread over several."""
        return str(self.batcher.device)

    @property
    def batch_size(self) -> int:
        """Inputs per forward pass: the one asked for, or less after out-of-memory."""
        return self.batcher.batch_size

    @property
    def dtype(self):
        """The dtype of the model's weights."""
        return next(self.model.parameters()).dtype

    # -- tokenization -----------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_pair(
        self, context: str, continuation: str, *, move_whitespace: bool = True
    ) -> tuple[list[int], list[int]]:
        """Context and continuation tokens, split as lm-evaluation-harness splits them.

        Trailing whitespace of the context moves to the continuation, and the
        continuation's tokens are taken from the tokenization of the joined string,
        so that " A" after "Answer:" is the token the model would write. A chat
        prompt ends in the assistant header's newline, which belongs to the prompt:
        ``move_whitespace=False`` keeps it there (moved, it would make every
        one-letter answer two tokens and cost the shared-context fast path).
        """
        if context == "":
            return [self.prefix_token_id], self.encode(continuation)
        spaces = len(context) - len(context.rstrip()) if move_whitespace else 0
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids) :]

    # -- the three methods --------------------------------------------------------------

    def loglikelihood(
        self,
        requests: Sequence[tuple[str, str]],
        *,
        desc: str = "loglikelihood",
        unit: str = "ctx",
        move_whitespace: bool = True,
    ) -> list[LoglikelihoodResult]:
        """log P(continuation | context) of each ``(context, continuation)`` request.

        Requests that share a context and have one-token continuations are scored
        together from one forward pass of the context. The progress bar counts
        forward-pass inputs (``unit``): one per shared context, one per other request.
        ``move_whitespace``: see :meth:`encode_pair` (``False`` for chat prompts).
        """
        pairs = []
        for index, request in enumerate(requests):
            if not (isinstance(request, tuple | list) and len(request) == 2):
                raise ScorerError(f"request {index}: expected (context, continuation)")
            context_ids, continuation_ids = self.encode_pair(
                *request, move_whitespace=move_whitespace
            )
            if not continuation_ids:
                raise ScorerError(f"request {index}: field 'continuation' encodes to no tokens")
            pairs.append((context_ids, continuation_ids))
        return self.loglikelihood_tokens(pairs, desc=desc, unit=unit)

    def loglikelihood_tokens(
        self,
        pairs: Sequence[tuple[list[int], list[int]]],
        *,
        desc: str = "loglikelihood",
        unit: str = "ctx",
    ) -> list[LoglikelihoodResult]:
        """``loglikelihood`` on already tokenized ``(context_ids, continuation_ids)`` pairs."""
        results: list[LoglikelihoodResult | None] = [None] * len(pairs)
        jobs: list[Job] = []
        shared: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        longer: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for index, (context_ids, continuation_ids) in enumerate(pairs):
            if len(continuation_ids) == 1:
                key = tuple(context_ids[-self.max_length :])
                shared.setdefault(key, []).append((index, continuation_ids[0]))
            else:
                longer.setdefault(tuple(context_ids), []).append((index, list(continuation_ids)))
        groups: list[Group] = []
        for context, items in longer.items():
            if self.batcher.reuses_cache and _worth_sharing(context, items, self.max_length):
                groups.append(
                    Group(
                        list(context),
                        [(self._read_span(results, i, c), c) for i, c in items],
                    )
                )
                continue
            for index, continuation in items:
                tokens = (list(context) + continuation)[-(self.max_length + 1) :]
                jobs.append(
                    Job(tokens[:-1], len(continuation), self._read_span(results, index, tokens))
                )
        for context, readers in shared.items():
            jobs.append(Job(list(context), 1, self._read_next(results, readers)))
        own = self.batcher.dealt(len(jobs)) + self.batcher.dealt(len(groups))
        with self._bar(own, desc, unit) as bar:
            self.batcher.run(jobs, bar)
            self.batcher.run_groups(groups, bar)
        return self.processes.fill(results)  # type: ignore[return-value]

    @staticmethod
    def _read_span(results, index: int, tokens: list[int]) -> Callable:
        def read(scores: NextTokens) -> None:
            import torch

            n = len(scores)
            targets = torch.tensor(tokens[-n:])
            picked = scores.pick(range(n), targets)
            greedy = bool((scores.greedy().cpu() == targets).all())
            results[index] = LoglikelihoodResult(float(picked.sum()), greedy, n)

        return read

    @staticmethod
    def _read_next(results, readers: list[tuple[int, int]]) -> Callable:
        def read(scores: NextTokens) -> None:
            best = int(scores.greedy()[0])
            tokens = [token for _, token in readers]
            picked = scores.pick([0] * len(tokens), tokens).tolist()
            for (index, token), logprob in zip(readers, picked, strict=True):
                results[index] = LoglikelihoodResult(logprob, token == best, 1)

        return read

    def loglikelihood_rolling(
        self,
        texts: Sequence[str],
        *,
        window: int | None = None,
        stride: int | None = None,
        desc: str = "perplexity",
    ) -> list[RollingResult]:
        """The log-likelihood of every token of each text, with a sliding window.

        Each text starts from the prefix token (BOS, else EOS), so its first token is
        scored too. A window is one forward pass of at most ``window`` tokens; after
        the first, each window scores the next ``stride`` tokens, so every token
        beyond the first window is predicted from at least ``window - stride``
        tokens of context. ``stride == window`` gives disjoint chunks.
        """
        window = min(window or self.max_length, self.max_length)
        stride = stride or window
        if not 1 <= stride <= window:
            raise ScorerError(f"stride must be between 1 and window ({window}), got {stride}")
        counts = [0] * len(texts)
        windows = []  # (text index, tokens fed, new, tokens scored)
        for index, text in enumerate(texts):
            tokens = [self.prefix_token_id, *self.encode(text)]
            counts[index] = len(tokens) - 1
            for start, end, new in _rolling_windows(len(tokens) - 1, window, stride):
                windows.append((index, tokens[start:end], new, tokens[end - new + 1 : end + 1]))
        windows.sort(key=lambda w: -len(w[1]))  # the batcher's order: texts sum in it
        sums: list[float | None] = [None] * len(windows)
        jobs = [
            Job(fed, new, self._read_sum(sums, number, targets))
            for number, (_, fed, new, targets) in enumerate(windows)
        ]
        with self._bar(self.batcher.dealt(len(jobs)), desc, "win") as bar:
            self.batcher.run(jobs, bar)
        totals = [0.0] * len(texts)
        for (index, *_), window_sum in zip(windows, self.processes.fill(sums), strict=True):
            totals[index] += window_sum
        return [RollingResult(total, count) for total, count in zip(totals, counts, strict=True)]

    @staticmethod
    def _read_sum(sums: list, number: int, targets: list[int]) -> Callable:
        def read(scores: NextTokens) -> None:
            sums[number] = float(scores.pick(range(len(scores)), targets).sum())

        return read

    # -- batching ------------------------------------------------------------------------

    def _bar(self, total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, leave=False)


def _worth_sharing(context, items, max_length: int) -> bool:
    """Whether continuations of one context are cheaper on its KV cache than alone.

    Sharing saves re-reading the context for every continuation but one; it costs
    padding, as the continuations run side by side at the longest one's length
    (a prompt's chosen and rejected replies differ by hundreds of tokens; the four
    answers of a question, by a few).
    """
    lengths = [len(continuation) for _, continuation in items]
    longest = max(lengths)
    saved = (len(lengths) - 1) * len(context)
    padding = sum(longest - n for n in lengths)
    return len(lengths) > 1 and saved > padding and len(context) + longest <= max_length


def _rolling_windows(n_targets: int, window: int, stride: int):
    """Windows over tokens ``0..n_targets`` (token 0 is the prefix) as ``(start, end, new)``.

    A window feeds tokens ``[start, end)`` and scores its last ``new`` predictions,
    i.e. tokens ``end - new + 1 .. end``; together the windows score tokens
    ``1..n_targets`` exactly once.
    """
    if n_targets <= 0:
        return
    end = min(window, n_targets)
    yield 0, end, end
    while end < n_targets:
        new_end = min(end + stride, n_targets)
        yield max(0, new_end - window), new_end, new_end - end
        end = new_end
