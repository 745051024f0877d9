"""Reward accuracy: does a DPO-trained policy prefer the chosen reply on held-out pairs?

The implicit DPO reward of a reply y to a prompt x is

    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))

with log pi(y | x) the summed log-probability of the reply's tokens after the prompt.
The prompt / reply split, the reward and the tie rule are ``tutorlm.logprobs``'s, the
ones the DPO trainer logs with: the reply starts where the render of the prompt (with
the assistant turn opened) stops matching the render of prompt + reply, by token ids.
A pair counts as correct when r(chosen) - r(rejected) > ``TIE_TOLERANCE``; ties (e.g.
a policy identical to its reference) are counted apart, never as half right.
Accuracy >= 0.98 earns a warning: such pairs are too easy to tell models apart
(synthetic corrupted negatives), healthy values on human-judged pairs are about 0.7-0.8.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tutorlm.evaluate.scorer import Scorer, ScorerError
from tutorlm.evaluate.stats import Interval, bootstrap_interval
from tutorlm.logprobs import implicit_reward, is_tie, prefers_chosen, split_pair

EASY_PAIRS_THRESHOLD = 0.98


def _messages(turns) -> list[dict]:
    return [t if isinstance(t, dict) else {"role": t.role, "content": t.content} for t in turns]


def pair_requests(tokenizer, pair, prefix_token_id: int):
    """The ``(context_ids, reply_ids)`` of a pair's chosen and rejected replies, split by
    token ids as the DPO trainer splits them (``tutorlm.logprobs.split_pair``).

    Raises:
        ScorerError: a reply that renders to no tokens after the prompt.
    """
    prompt_ids, chosen_ids, rejected_ids = split_pair(
        tokenizer, _messages(pair.prompt), _messages(pair.chosen), _messages(pair.rejected)
    )
    if not chosen_ids or not rejected_ids:
        raise ScorerError(f"pair {pair.id}: a reply renders to no tokens after the prompt")
    context = prompt_ids or [prefix_token_id]
    return [(context, chosen_ids), (context, rejected_ids)]


@dataclass
class RewardResult:
    """Reward accuracy with ties apart, margins and breakdowns."""

    beta: float
    accuracy: Interval
    tie_rate: float
    mean_margin: float
    mean_chosen: float
    mean_rejected: float
    by_source: dict[str, dict]
    by_method: dict[str, dict]
    pairs: list[dict] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.accuracy.n

    @property
    def warning(self) -> str | None:
        if self.n and self.accuracy.value >= EASY_PAIRS_THRESHOLD:
            return (
                f"reward accuracy {self.accuracy.value:.3f} >= {EASY_PAIRS_THRESHOLD}: these pairs "
                "are too easy to tell models apart (human-judged pairs give about 0.7-0.8)"
            )
        return None

    def to_dict(self) -> dict:
        return {
            "kind": "reward",
            "beta": self.beta,
            "n": self.n,
            "accuracy": self.accuracy.to_dict(),
            "tie_rate": self.tie_rate,
            "mean_margin": self.mean_margin,
            "mean_reward_chosen": self.mean_chosen,
            "mean_reward_rejected": self.mean_rejected,
            "by_source": self.by_source,
            "by_method": self.by_method,
            "warning": self.warning,
        }


def _as_scorer(model, tokenizer, *, device: str = "auto", **kwargs) -> Scorer:
    if isinstance(model, Scorer):
        return model
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return Scorer.from_spec(model, device=device, **kwargs)
    if tokenizer is None:
        raise ScorerError("a tokenizer is needed when the model is given as an object")
    return Scorer(model, tokenizer, **kwargs)


def _logprobs(scorer: Scorer, requests, desc: str) -> list[float]:
    return [result.logprob for result in scorer.loglikelihood_tokens(requests, desc=desc)]


def _breakdown(rows: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[str(key(row))].append(row)
    return {
        name: {
            "n": len(members),
            "accuracy": sum(m["correct"] for m in members) / len(members),
            "tie_rate": sum(m["tie"] for m in members) / len(members),
            "mean_margin": sum(m["margin"] for m in members) / len(members),
        }
        for name, members in sorted(groups.items())
    }


def reward_accuracy(
    policy,
    reference,
    tokenizer=None,
    pairs: Sequence = (),
    *,
    beta: float = 0.1,
    batch_size: int = 8,
    dtype=None,
    device: str = "auto",
    seed: int = 0,
    resamples: int = 1000,
) -> RewardResult:
    """Reward accuracy of ``policy`` against ``reference`` on preference records.

    Args:
        policy: a model spec, a model object or a :class:`Scorer`.
        reference: the same kinds, or None for a PEFT policy: its base with the
            adapter disabled (the reference TRL's DPOTrainer uses for LoRA).
        tokenizer: needed when a model is given as an object.
        pairs: ``PreferenceRecord``s (prompt, chosen, rejected, source, meta).
        beta: the DPO beta the rewards are scaled by.
        device: where a policy given as a spec loads (``resolve_device``); a
            reference given as a spec always loads as the policy did: on its device
            (or with its device map), scoring with its processes (``Scorer.sibling``).
    """
    if not pairs:
        raise ScorerError("reward accuracy needs at least one preference pair")
    options = {"batch_size": batch_size, "dtype": dtype}
    policy_scorer = _as_scorer(policy, tokenizer, device=device, **options)
    tokenizer = policy_scorer.tokenizer
    requests = [
        request
        for pair in pairs
        for request in pair_requests(tokenizer, pair, policy_scorer.prefix_token_id)
    ]
    policy_lp = _logprobs(policy_scorer, requests, "reward policy")
    if reference is None:
        disable = getattr(policy_scorer.model, "disable_adapter", None)
        if disable is None:
            raise ScorerError(
                "reference=None needs a PEFT policy (its adapter is disabled for the reference)"
            )
        with disable():
            reference_lp = _logprobs(policy_scorer, requests, "reward reference")
    elif isinstance(reference, str) or hasattr(reference, "__fspath__"):
        reference_scorer = policy_scorer.sibling(reference, dtype=dtype)
        reference_lp = _logprobs(reference_scorer, requests, "reward reference")
    else:
        options["processes"] = policy_scorer.processes
        reference_scorer = _as_scorer(reference, tokenizer, **options)
        reference_lp = _logprobs(reference_scorer, requests, "reward reference")
    rows = []
    for index, pair in enumerate(pairs):
        chosen = implicit_reward(policy_lp[2 * index], reference_lp[2 * index], beta)
        rejected = implicit_reward(policy_lp[2 * index + 1], reference_lp[2 * index + 1], beta)
        margin = chosen - rejected
        rows.append(
            {
                "id": pair.id,
                "source": pair.source,
                "method": (pair.meta or {}).get("method", "unknown"),
                "reward_chosen": chosen,
                "reward_rejected": rejected,
                "margin": margin,
                "tie": bool(is_tie(margin)),
                "correct": bool(prefers_chosen(margin)),
            }
        )
    n = len(rows)
    return RewardResult(
        beta=beta,
        accuracy=bootstrap_interval(
            [float(r["correct"]) for r in rows], resamples=resamples, seed=seed
        ),
        tie_rate=sum(r["tie"] for r in rows) / n,
        mean_margin=sum(r["margin"] for r in rows) / n,
        mean_chosen=sum(r["reward_chosen"] for r in rows) / n,
        mean_rejected=sum(r["reward_rejected"] for r in rows) / n,
        by_source=_breakdown(rows, lambda r: r["source"]),
        by_method=_breakdown(rows, lambda r: r["method"]),
        pairs=rows,
    )
