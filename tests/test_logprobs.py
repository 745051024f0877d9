"""One log-prob path: training and evaluation split, score and judge a pair alike."""

from __future__ import annotations

import pytest
import torch

from tutorlm.data.formats import PreferenceRecord
from tutorlm.logprobs import (
    TIE_TOLERANCE,
    implicit_reward,
    is_tie,
    prefers_chosen,
    reply_logps,
    scored_logps,
    split_pair,
    split_reply,
)

PROMPT = [{"role": "user", "content": "What is 7 times 6?"}]
CHOSEN = [{"role": "assistant", "content": "7 times 6 is 42."}]
REJECTED = [{"role": "assistant", "content": "7 times 6 is 36, I think."}]


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """conftest's tiny random Llama over the bundled tokenizer, in fp32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_the_reply_starts_after_the_opened_assistant_turn(tokenizer):
    prompt_ids, chosen_ids, rejected_ids = split_pair(tokenizer, PROMPT, CHOSEN, REJECTED)
    assert split_reply(tokenizer, PROMPT, CHOSEN) == (prompt_ids, chosen_ids)
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(chosen_ids) == "7 times 6 is 42.<|im_end|>\n"
    assert tokenizer.decode(rejected_ids) == "7 times 6 is 36, I think.<|im_end|>\n"


def test_training_and_evaluation_give_the_same_log_probs(tokenizer, model):
    """The trainer's batch (right-padded, chosen then rejected) and the scorer's (left-padded,
    replies on the prompt's KV cache, float32 reading) agree in fp32 to 1e-6 of the sum
    (about 1e-5 nats on sums of about -100)."""
    from tutorlm.evaluate.reward import pair_requests
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.train.data import PreferenceCollator

    prompt_ids, chosen_ids, rejected_ids = split_pair(tokenizer, PROMPT, CHOSEN, REJECTED)
    batch = PreferenceCollator(tokenizer.pad_token_id)(
        [{"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}]
    )
    with torch.no_grad():
        scored = scored_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        )
    training, lengths = scored.per_sequence()
    assert lengths.tolist() == [len(chosen_ids), len(rejected_ids)]
    pair = PreferenceRecord(
        id="p", source="s", prompt=PROMPT, chosen=CHOSEN, rejected=REJECTED, meta={}
    )
    scorer = Scorer(model, tokenizer, batch_size=4)
    requests = pair_requests(tokenizer, pair, scorer.prefix_token_id)
    assert requests == [(prompt_ids, chosen_ids), (prompt_ids, rejected_ids)]
    evaluation = [result.logprob for result in scorer.loglikelihood_tokens(requests)]
    assert training.tolist() == pytest.approx(evaluation, rel=1e-6)
    direct = reply_logps(model, requests, pad_token_id=tokenizer.pad_token_id)
    assert direct == pytest.approx(evaluation, rel=1e-6)
    by_hand = torch.log_softmax(model(torch.tensor([prompt_ids + chosen_ids])).logits, -1)[0]
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(chosen_ids) - 1)
    expected = sum(by_hand[p, chosen_ids[i]].item() for i, p in enumerate(positions))
    assert evaluation[0] == pytest.approx(expected, rel=1e-6)


def test_scoring_goes_through_peft_wrappers(tokenizer, model):
    """A fresh LoRA adapter (B = 0) scores exactly as its base; disabled, too."""
    import copy

    from peft import LoraConfig, get_peft_model

    prompt_ids, chosen_ids, _ = split_pair(tokenizer, PROMPT, CHOSEN, REJECTED)
    pairs = [(prompt_ids, chosen_ids)]
    base = reply_logps(model, pairs, pad_token_id=tokenizer.pad_token_id)
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert reply_logps(wrapped, pairs, pad_token_id=tokenizer.pad_token_id) == base
    with wrapped.disable_adapter():
        assert reply_logps(wrapped, pairs, pad_token_id=tokenizer.pad_token_id) == base


def test_implicit_reward_and_the_tie_rule_for_floats_and_tensors():
    assert implicit_reward(-1.0, -1.5, 0.5) == 0.25
    assert implicit_reward(torch.tensor([-1.0]), torch.tensor([-1.5]), 0.5).tolist() == [0.25]
    margins = [0.0, TIE_TOLERANCE / 2, TIE_TOLERANCE, 2 * TIE_TOLERANCE, -2 * TIE_TOLERANCE]
    assert [bool(is_tie(m)) for m in margins] == [True, True, True, False, False]
    assert [bool(prefers_chosen(m)) for m in margins] == [False, False, False, True, False]
    as_tensor = prefers_chosen(torch.tensor(margins, dtype=torch.float64))
    assert as_tensor.tolist() == [False, False, False, True, False]


def test_training_logs_and_evaluation_count_tied_pairs_alike(tokenizer):
    """Rewards within the tolerance of each other are wrong pairs on both sides."""
    from eval_fakes import preferring_lm, uniform_lm

    from tutorlm.evaluate.reward import reward_accuracy
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.train.losses import preference_loss

    # training: chosen log-ratio ahead by 0, by half the tolerance, and by 4 nats
    policy_chosen = torch.tensor([-2.0, -2.0 + TIE_TOLERANCE, -1.0], dtype=torch.float64)
    policy_rejected = torch.tensor([-2.0, -2.0, -5.0], dtype=torch.float64)
    reference = torch.full((3,), -2.0, dtype=torch.float64)
    result = preference_loss("dpo", policy_chosen, policy_rejected, reference, reference, beta=0.5)
    assert result.accuracies.tolist() == [0.0, 0.0, 1.0]
    # evaluation: a policy identical to its reference ties every pair; a policy that
    # prefers " yes" wins the pair whose chosen reply says it
    same = Scorer(uniform_lm(len(tokenizer)), tokenizer)
    yes = tokenizer.encode(" yes")[0]
    pairs = [
        PreferenceRecord(
            id=f"p{i}",
            source="s",
            prompt=[{"role": "user", "content": f"Question {i}?"}],
            chosen=[{"role": "assistant", "content": "ok yes"}],
            rejected=[{"role": "assistant", "content": "ok no"}],
            meta={},
        )
        for i in range(2)
    ]
    tied = reward_accuracy(same, same, pairs=pairs, resamples=10)
    assert [(row["tie"], row["correct"]) for row in tied.pairs] == [(True, False)] * 2
    policy = Scorer(preferring_lm(len(tokenizer), [yes]), tokenizer)
    won = reward_accuracy(policy, same, pairs=pairs, resamples=10)
    assert [(row["tie"], row["correct"]) for row in won.pairs] == [(False, True)] * 2
