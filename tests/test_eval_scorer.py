"""The scorer: lm-eval's tokenization, exact log-probs, batching and padding invariance."""

from __future__ import annotations

import math

import pytest
import torch
from eval_fakes import preferring_lm, uniform_lm

from tutorlm.evaluate.scorer import Scorer, ScorerError, _rolling_windows, _worth_sharing

REQUESTS = [
    ("The capital of France is", " Paris"),
    ("Answer:", " A"),
    ("Answer:", " B"),
    (
        "A much longer context that will force the shorter rows to be padded on the left side.",
        " yes",
    ),
    ("2 + 2 =", " 4, of course"),
    ("Photosynthesis happens in the", " chloroplast."),
    ("Answer:", " C"),
    ("Q", " a b c d e f"),
    ("Newton's second law says that force equals", " mass times acceleration"),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def reference_logprob(model, context_ids, continuation_ids) -> float:
    """log P(continuation | context) from one unpadded forward pass over all logits."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()  # (T, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(context_ids)
    return sum(float(logprobs[start + i - 1, tok]) for i, tok in enumerate(continuation_ids))


def test_encode_pair_moves_trailing_space_and_splits_the_joined_string(tiny):
    scorer = Scorer(*tiny)
    assert scorer.encode_pair("Answer: ", "A") == scorer.encode_pair("Answer:", " A")
    context_ids, continuation_ids = scorer.encode_pair("Answer:", " A")
    assert context_ids == scorer.encode("Answer:")
    assert context_ids + continuation_ids == scorer.encode("Answer: A")
    assert scorer.encode_pair("", "hello") == ([scorer.prefix_token_id], scorer.encode("hello"))
    # a chat prompt keeps its final newline: the answer is the letter alone
    header = "<|im_start|>assistant\n"
    kept = scorer.encode_pair(header, "A", move_whitespace=False)
    assert kept == (
        scorer.encode(header),
        scorer.encode(header + "A")[len(scorer.encode(header)) :],
    )
    assert scorer.encode_pair(header, "A")[0] == scorer.encode(header[:-1])


def test_loglikelihood_matches_an_unbatched_full_forward(tiny):
    model, tokenizer = tiny
    scorer = Scorer(model, tokenizer, batch_size=4)
    results = scorer.loglikelihood(REQUESTS)
    for (context, continuation), result in zip(REQUESTS, results, strict=True):
        context_ids, continuation_ids = scorer.encode_pair(context, continuation)
        assert result.n_tokens == len(continuation_ids)
        assert result.logprob == pytest.approx(
            reference_logprob(model, context_ids, continuation_ids), abs=1e-4
        )


def test_batch_size_one_and_eight_give_the_same_scores(tiny):
    one = Scorer(*tiny, batch_size=1).loglikelihood(REQUESTS)
    eight = Scorer(*tiny, batch_size=8).loglikelihood(REQUESTS)
    for a, b in zip(one, eight, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.is_greedy == b.is_greedy


def test_left_padding_changes_nothing(tiny):
    scorer = Scorer(*tiny, batch_size=8)
    short = [("Hi", " there friend")]
    alone = scorer.loglikelihood(short)[0].logprob
    long_context = "word " * 60
    padded = scorer.loglikelihood(short + [(long_context, " end of it")])[0].logprob
    assert padded == pytest.approx(alone, abs=1e-4)


def test_shared_context_needs_one_forward_pass_per_context(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    model = uniform_lm(len(tokenizer))
    scorer = Scorer(model, tokenizer, batch_size=1)
    requests = [(f"Question {q}\nAnswer:", f" {letter}") for q in range(3) for letter in "ABCD"]
    results = scorer.loglikelihood(requests)
    assert len(model.calls) == 3
    assert all(r.logprob == pytest.approx(-math.log(len(tokenizer)), rel=1e-5) for r in results)


def test_is_greedy_marks_the_preferred_continuation(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    a_token = tokenizer.encode(" A")[0]
    scorer = Scorer(preferring_lm(len(tokenizer), [a_token]), tokenizer)
    greedy = [
        r.is_greedy
        for r in scorer.loglikelihood([("Answer:", " A"), ("Answer:", " B"), ("x", " A A")])
    ]
    assert greedy == [True, False, True]


def test_rolling_windows_score_every_token_once():
    for n, window, stride in [
        (1, 4, 2),
        (10, 4, 2),
        (10, 4, 4),
        (17, 5, 1),
        (3, 8, 8),
        (100, 16, 7),
    ]:
        scored = []
        for start, end, new in _rolling_windows(n, window, stride):
            assert end - start <= window and 1 <= new <= end - start
            scored.extend(range(end - new + 1, end + 1))
        assert scored == list(range(1, n + 1))


def test_rolling_with_one_window_equals_loglikelihood_from_the_prefix(tiny):
    scorer = Scorer(*tiny, batch_size=3)
    text = "Energy is conserved in an isolated system, so the total stays the same."
    rolled = scorer.loglikelihood_rolling([text], window=512, stride=512)[0]
    direct = scorer.loglikelihood([("", text)])[0]
    assert rolled.n_tokens == direct.n_tokens == len(scorer.encode(text))
    assert rolled.logprob == pytest.approx(direct.logprob, abs=1e-4)


def test_rolling_stride_is_validated(tiny):
    with pytest.raises(ScorerError, match="stride"):
        Scorer(*tiny).loglikelihood_rolling(["abc"], window=4, stride=5)


def test_bad_requests_are_named_by_index(tiny):
    scorer = Scorer(*tiny)
    with pytest.raises(ScorerError, match="request 1: field 'continuation'"):
        scorer.loglikelihood([("a", " b"), ("a", "")])
    with pytest.raises(ScorerError, match="request 0"):
        scorer.loglikelihood(["just a string"])


def test_bfloat16_scores_close_to_float32(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fp32 = Scorer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, dtype="float32")
    bf16 = Scorer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    for a, b in zip(
        fp32.loglikelihood(REQUESTS[:4]), bf16.loglikelihood(REQUESTS[:4]), strict=True
    ):
        assert b.logprob == pytest.approx(a.logprob, abs=0.1 * a.n_tokens)


def test_bfloat16_letters_are_read_from_float32_logits(tiny_model_dir):
    """In bf16 a logit is rounded to a few bits, so letters tie and the tie goes to "A";
    the scorer recomputes the scored tokens' logits in float32 from the last hidden state."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # large logits: bf16 keeps 8 bits, steps of 0.25-1 here
        model.get_output_embeddings().weight.mul_(400.0)
    scorer = Scorer(model, tokenizer, dtype="bfloat16")
    context = "Question: which letter?\nAnswer:"
    letters = [f" {chr(c)}" for c in range(ord("A"), ord("Z") + 1)]
    results = scorer.loglikelihood([(context, letter) for letter in letters])

    ids = torch.tensor([scorer.encode(context)])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]  # bf16
        rounded = model.lm_head(hidden).float()  # the bf16 logits
        exact = model.lm_head.weight.float() @ hidden.float()
    lse = torch.logsumexp(rounded, dim=-1)
    tokens = [scorer.encode(letter)[0] for letter in letters]
    for result, token in zip(results, tokens, strict=True):
        assert result.logprob == pytest.approx(float(exact[token] - lse), rel=1e-6)
    # read from the bf16 logits, these scores would have been off by up to half a step
    assert float((rounded[tokens] - exact[tokens]).abs().max()) > 0.1


SHARED = [
    ("Which gas do plants take in?", " carbon dioxide from the air"),
    ("Which gas do plants take in?", " oxygen and water"),
    ("Which gas do plants take in?", " nitrogen gas, mostly"),
    ("Count with me, slowly:", " one two"),
    ("Count with me, slowly:", " three four five"),
    ("A much longer question, so that the shorter contexts are padded on the left:", " yes it"),
    ("A much longer question, so that the shorter contexts are padded on the left:", " no, not"),
]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_long_continuations_of_one_context_share_its_pass(tiny, batch_size):
    """Continuations of several tokens that share a context are scored on the context's
    KV cache: the same log-probs as a full forward of each, in two passes per batch."""
    model, tokenizer = tiny
    calls = []
    hook = model.register_forward_pre_hook(
        lambda _m, _args, kw: calls.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        results = Scorer(model, tokenizer, batch_size=batch_size).loglikelihood(SHARED)
    finally:
        hook.remove()
    scorer = Scorer(model, tokenizer)
    for (context, continuation), result in zip(SHARED, results, strict=True):
        context_ids, continuation_ids = scorer.encode_pair(context, continuation)
        assert result.n_tokens == len(continuation_ids) > 1
        assert result.logprob == pytest.approx(
            reference_logprob(model, context_ids, continuation_ids), abs=1e-4
        )
    contexts = 3
    assert len(calls) == 2 * math.ceil(contexts / batch_size)
    assert sum(shape[0] for shape in calls[1::2]) == len(SHARED)  # one row per continuation


def test_shared_context_continuations_in_bfloat16_stay_close_to_float32(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fp32 = Scorer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    bf16 = Scorer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, dtype="bfloat16")
    for a, b in zip(fp32.loglikelihood(SHARED), bf16.loglikelihood(SHARED), strict=True):
        assert b.n_tokens == a.n_tokens
        assert b.logprob == pytest.approx(a.logprob, abs=0.1 * a.n_tokens)


def test_a_context_is_shared_only_where_that_saves_more_than_the_padding_costs():
    answers = [(0, [1, 2]), (1, [3, 4, 5]), (2, [6, 7]), (3, [8, 9, 10])]
    assert _worth_sharing(list(range(50)), answers, max_length=2048)
    assert not _worth_sharing(list(range(50)), answers[:1], max_length=2048)  # one reply
    assert not _worth_sharing(list(range(50)), answers, max_length=52)  # too long together
    # a prompt of 40 tokens with replies of 60 and 300: padding 240 > 40 saved
    replies = [(0, list(range(60))), (1, list(range(300)))]
    assert not _worth_sharing(list(range(40)), replies, max_length=2048)
    assert _worth_sharing(list(range(400)), replies, max_length=2048)
