"""Preference losses as plain tensor maths: the semantics tutorlm promises, once.

TRL >= 0.29 silently ignores ``label_smoothing`` for its sigmoid loss, so "cDPO"
by name trains plain DPO there. These functions are what the DPO stage
backpropagates whatever TRL's version; each is unit-tested against its closed
form in ``tests/test_losses.py``.

Every loss takes summed completion log-probabilities of the policy and of the
reference model, one value per pair (shape ``(B,)``), and returns the loss per
pair (``(B,)``); the trainer averages over the batch. With the implicit reward
``r = beta * (log pi(y|x) - log ref(y|x))`` and

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))
    u = beta * h

the losses are (``sigma`` = logistic function, ``eps`` = label noise rate):

- ``dpo``    : -log sigma(u)                                  (Rafailov et al. 2023)
- ``cdpo``   : -(1 - eps) log sigma(u) - eps log sigma(-u)     (conservative DPO, label smoothing)
- ``robust`` : (-(1 - eps) log sigma(u) + eps log sigma(-u)) / (1 - 2 eps)   (rDPO, Chowdhury et al. 2024)
- ``ipo``    : (h - 1 / (2 beta))^2                            (Azar et al. 2023)
- ``hinge``  : max(0, 1 - u)                                   (SLiC-HF, Zhao et al. 2023)

cDPO is the expected DPO loss when each label is flipped with probability eps:
(1 - eps) L(w, l) + eps L(l, w). rDPO is the unbiased estimator of the clean
loss under the same noise, so it differs from cDPO in the sign and scale of the
flipped term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tutorlm.logprobs import implicit_reward, prefers_chosen

LOSS_NAMES = ("dpo", "cdpo", "robust", "ipo", "hinge")
"""The preference losses tutorlm implements, by recipe name."""


def logratio_margin(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    """``h``: how much more the policy prefers the chosen reply than the reference does. ``(B,)``."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Sigmoid DPO: ``-log sigma(beta h)`` per pair."""
    return -F.logsigmoid(beta * h)


def cdpo_loss(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """Conservative DPO: ``(1 - eps) L(w, l) + eps L(l, w)`` per pair.

    With ``eps = 0`` this is exactly :func:`dpo_loss`; with ``eps > 0`` the
    optimum is a finite margin instead of an unbounded one, which is what keeps
    noisy pairs from being fitted to certainty (EPFLLaMA uses eps = 0.2).
    """
    _check_eps(eps, upper=1.0)
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def robust_loss(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """rDPO: the unbiased estimate of the clean DPO loss under label-flip rate ``eps``.

    ``(-(1 - eps) log sigma(u) + eps log sigma(-u)) / (1 - 2 eps)``; needs ``eps < 0.5``.
    """
    _check_eps(eps, upper=0.5)
    return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (
        1.0 - 2.0 * eps
    )


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO: the squared distance of the margin from ``1 / (2 beta)`` per pair.

    :func:`preference_loss` computes ``h`` for IPO from log-ratios averaged per
    completion token when it is given the lengths (as TRL and the IPO authors
    do), so that the target margin does not scale with the length of the reply.
    """
    return (h - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC hinge: ``max(0, 1 - beta h)`` per pair."""
    return torch.relu(1.0 - beta * h)


def _check_eps(eps: float, upper: float) -> None:
    if not 0.0 <= eps < upper:
        raise ValueError(f"eps must be in [0, {upper}), got {eps}")


@dataclass(frozen=True)
class PreferenceLoss:
    """What one batch of pairs gives: the loss per pair and the implicit rewards.

    Attributes:
        losses: loss per pair, ``(B,)``.
        chosen_rewards: ``beta * (log pi(y_w) - log ref(y_w))``, detached, ``(B,)``.
        rejected_rewards: the same for the rejected reply, ``(B,)``.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        """Chosen minus rejected reward, ``(B,)``."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """1.0 where the pair counts as correct (``tutorlm.logprobs.prefers_chosen``: ties
        count as wrong), ``(B,)``."""
        return prefers_chosen(self.margins).float()


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "dpo": lambda h, beta, eps: dpo_loss(h, beta),
    "cdpo": cdpo_loss,
    "robust": robust_loss,
    "ipo": lambda h, beta, eps: ipo_loss(h, beta),
    "hinge": lambda h, beta, eps: hinge_loss(h, beta),
}


def preference_loss(
    name: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    eps: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLoss:
    """The named loss of a batch of pairs, with the rewards the trainer logs.

    Args:
        name: one of :data:`LOSS_NAMES`.
        policy_chosen: log pi(y_w|x), ``(B,)``.
        policy_rejected: log pi(y_l|x), ``(B,)``.
        ref_chosen: log ref(y_w|x), ``(B,)``; no gradient flows into it.
        ref_rejected: log ref(y_l|x), ``(B,)``.
        beta: strength of the KL regulariser (IPO's tau).
        eps: label noise rate for ``cdpo`` and ``robust``; ignored by the others.
        chosen_lengths: completion tokens of each chosen reply, ``(B,)``; with
            ``rejected_lengths``, makes ``ipo`` use per-token log-ratios.
        rejected_lengths: completion tokens of each rejected reply, ``(B,)``.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; expected one of {list(LOSS_NAMES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    if name == "ipo" and chosen_lengths is not None and rejected_lengths is not None:
        h = (policy_chosen - ref_chosen) / chosen_lengths.clamp(min=1) - (
            policy_rejected - ref_rejected
        ) / rejected_lengths.clamp(min=1)
    else:
        h = logratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = _LOSSES[name](h, beta, eps)
    return PreferenceLoss(
        losses=losses,
        chosen_rewards=implicit_reward(policy_chosen, ref_chosen, beta).detach(),
        rejected_rewards=implicit_reward(policy_rejected, ref_rejected, beta).detach(),
    )
