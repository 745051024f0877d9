"""Auto batch size: a scoring pass that runs out of memory is retried at half the batch
size, down to 1, and gives exactly what a batch-1 run gives."""

from __future__ import annotations

import pytest
import torch

from tutorlm.evaluate.batches import BatchMemoryError
from tutorlm.evaluate.scorer import Scorer
from tutorlm.hardware import is_out_of_memory

CONTEXTS = [f"Question {i}: what does unit {i} of the course cover? Answer:" for i in range(9)]
REQUESTS = [(context, f" unit {i} covers forces") for i, context in enumerate(CONTEXTS)]
SHARED = [
    (context, answer)
    for context in CONTEXTS[:5]
    for answer in (" mass times acceleration", " the rate of change of momentum")
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def cuda_oom():
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def runtime_oom():
    return RuntimeError("CUDA error: out of memory")


class MemoryLimit:
    """Make ``model`` raise an out-of-memory error on passes of more than ``rows`` rows."""

    def __init__(self, model, rows: int, error=cuda_oom):
        self.rows, self.error, self.sizes = rows, error, []
        self.hook = model.register_forward_pre_hook(self.check, with_kwargs=True)

    def check(self, _module, _args, kwargs):
        size = kwargs["input_ids"].shape[0]
        self.sizes.append(size)
        if size > self.rows:
            raise self.error()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hook.remove()


@pytest.mark.parametrize("error", [cuda_oom, runtime_oom])
def test_out_of_memory_halves_the_batch_and_scores_as_batch_one(tiny, error):
    model, tokenizer = tiny
    expected = Scorer(model, tokenizer, batch_size=1).loglikelihood(REQUESTS)
    scorer = Scorer(model, tokenizer, batch_size=8)
    with MemoryLimit(model, rows=3, error=error) as limit:
        results = scorer.loglikelihood(REQUESTS)
    assert scorer.batch_size == 2  # 8 and 4 ran out of memory
    assert limit.sizes == [8, 4, 2, 2, 2, 2, 1]  # 9 inputs: the failed tries, then 2+2+2+2+1
    for got, want in zip(results, expected, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert got.is_greedy == want.is_greedy


def test_rolling_scores_count_every_window_once_after_a_retry(tiny):
    model, tokenizer = tiny
    texts = [f"Document {i} is about energy. " * (3 + i) for i in range(5)]
    expected = Scorer(model, tokenizer, batch_size=1).loglikelihood_rolling(texts, window=16)
    scorer = Scorer(model, tokenizer, batch_size=4)
    with MemoryLimit(model, rows=1):
        results = scorer.loglikelihood_rolling(texts, window=16)
    assert scorer.batch_size == 1
    for got, want in zip(results, expected, strict=True):
        assert got.n_tokens == want.n_tokens
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)


def test_shared_context_passes_halve_too(tiny):
    model, tokenizer = tiny
    expected = Scorer(model, tokenizer, batch_size=1).loglikelihood(SHARED)
    scorer = Scorer(model, tokenizer, batch_size=4)
    with MemoryLimit(model, rows=2):  # the continuation pass has two rows per context
        results = scorer.loglikelihood(SHARED)
    assert scorer.batch_size == 1
    for got, want in zip(results, expected, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)


def test_one_input_that_does_not_fit_raises_with_a_message(tiny):
    model, tokenizer = tiny
    scorer = Scorer(model, tokenizer, batch_size=4)
    with MemoryLimit(model, rows=0), pytest.raises(BatchMemoryError) as caught:
        scorer.loglikelihood(REQUESTS)
    assert str(caught.value).startswith("out of memory on one input alone on cpu (CUDA out")
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)
    assert scorer.batch_size == 1


def test_other_errors_are_not_retried(tiny):
    model, tokenizer = tiny
    scorer = Scorer(model, tokenizer, batch_size=8)

    def shape_error():
        return RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with MemoryLimit(model, rows=0, error=shape_error) as limit, pytest.raises(RuntimeError):
        scorer.loglikelihood(REQUESTS)
    assert scorer.batch_size == 8
    assert limit.sizes == [8]


@pytest.mark.parametrize(
    ("error", "oom"),
    [
        (torch.cuda.OutOfMemoryError("anything"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20 MiB"), True),
        (RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("expected scalar type Float"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_is_out_of_memory(error, oom):
    assert is_out_of_memory(error) is oom
