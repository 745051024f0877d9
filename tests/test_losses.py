"""The preference losses against their closed forms, computed by hand.

One pair throughout: log pi(y_w) = -1.0, log pi(y_l) = -3.0, log ref(y_w) = -1.5,
log ref(y_l) = -2.0, so h = (-1.0 + 1.5) - (-3.0 + 2.0) = 1.5; with beta = 0.5,
u = beta * h = 0.75.
"""

from __future__ import annotations

import math

import pytest
import torch

from tutorlm.logprobs import ScoredTokens, token_logps
from tutorlm.train.losses import (
    LOSS_NAMES,
    cdpo_loss,
    dpo_loss,
    logratio_margin,
    preference_loss,
)

BETA, EPS, U = 0.5, 0.2, 0.75


def softplus(x: float) -> float:
    """log(1 + e^x) = -log sigma(-x)."""
    return math.log1p(math.exp(x))


def pair(requires_grad: bool = False):
    policy_chosen = torch.tensor([-1.0], requires_grad=requires_grad)
    policy_rejected = torch.tensor([-3.0], requires_grad=requires_grad)
    return policy_chosen, policy_rejected, torch.tensor([-1.5]), torch.tensor([-2.0])


def loss_of(name: str, beta: float = BETA, eps: float = 0.0, **kw) -> float:
    return preference_loss(name, *pair(), beta=beta, eps=eps, **kw).losses.item()


def test_margin_is_policy_logratio_minus_reference_logratio():
    assert logratio_margin(*pair()).item() == pytest.approx(1.5)


def test_dpo_is_softplus_of_minus_u():
    # -log sigma(0.75) = log(1 + e^-0.75) = 0.3868710...
    assert loss_of("dpo") == pytest.approx(softplus(-U), abs=1e-6)
    assert loss_of("dpo") == pytest.approx(0.386871, abs=1e-6)


def test_cdpo_mixes_both_label_directions():
    expected = (1 - EPS) * softplus(-U) + EPS * softplus(U)  # 0.8 * 0.386871 + 0.2 * 1.136871
    assert loss_of("cdpo", eps=EPS) == pytest.approx(expected, abs=1e-6)
    assert loss_of("cdpo", eps=EPS) == pytest.approx(0.536871, abs=1e-6)


def test_cdpo_with_zero_eps_is_exactly_dpo():
    h = torch.linspace(-3, 3, 13)
    assert torch.equal(cdpo_loss(h, BETA, 0.0), dpo_loss(h, BETA))


def test_robust_is_the_unbiased_rdpo_estimator():
    expected = ((1 - EPS) * softplus(-U) - EPS * softplus(U)) / (1 - 2 * EPS)
    assert loss_of("robust", eps=EPS) == pytest.approx(expected, abs=1e-6)
    assert loss_of("robust", eps=EPS) == pytest.approx(0.136871, abs=1e-6)


def test_ipo_is_squared_distance_from_half_inverse_beta():
    # (h - 1 / (2 beta))^2 with beta 0.25: (1.5 - 2)^2
    assert loss_of("ipo", beta=0.25) == pytest.approx(0.25, abs=1e-6)


def test_ipo_uses_per_token_logratios_when_given_lengths():
    # chosen 2 tokens, rejected 4: h = 0.5 / 2 - (-1.0) / 4 = 0.5; (0.5 - 2)^2 = 2.25
    value = loss_of(
        "ipo", beta=0.25, chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4])
    )
    assert value == pytest.approx(2.25, abs=1e-6)


def test_lengths_do_not_change_the_other_losses():
    lengths = {"chosen_lengths": torch.tensor([2]), "rejected_lengths": torch.tensor([4])}
    assert loss_of("dpo", **lengths) == loss_of("dpo")


def test_hinge_is_relu_of_one_minus_u():
    assert loss_of("hinge") == pytest.approx(0.25, abs=1e-6)
    assert loss_of("hinge", beta=1.0) == 0.0  # u = 1.5 > 1: no loss


def test_rewards_margins_and_accuracies():
    result = preference_loss("dpo", *pair(), beta=BETA)
    assert result.chosen_rewards.item() == pytest.approx(0.25)  # 0.5 * (-1.0 + 1.5)
    assert result.rejected_rewards.item() == pytest.approx(-0.5)  # 0.5 * (-3.0 + 2.0)
    assert result.margins.item() == pytest.approx(0.75)
    assert result.accuracies.tolist() == [1.0]


def test_ties_count_as_wrong():
    same = torch.tensor([-2.0, -1.0])
    result = preference_loss("dpo", same, same, same, same, beta=BETA)
    assert result.accuracies.tolist() == [0.0, 0.0]
    assert result.losses.tolist() == pytest.approx([math.log(2)] * 2)


def test_cdpo_gradient_differs_from_dpo_and_matches_closed_form():
    grads = {}
    for name in ("dpo", "cdpo"):
        policy_chosen, policy_rejected, ref_chosen, ref_rejected = pair(requires_grad=True)
        loss = preference_loss(
            name, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=BETA, eps=EPS
        ).losses.sum()
        loss.backward()
        grads[name] = policy_chosen.grad.item()
    sigma = 1 / (1 + math.exp(-U))
    assert grads["dpo"] == pytest.approx(-BETA * (1 - sigma), abs=1e-6)
    assert grads["cdpo"] == pytest.approx(-BETA * ((1 - EPS) * (1 - sigma) - EPS * sigma), abs=1e-6)
    assert grads["cdpo"] != pytest.approx(grads["dpo"], abs=1e-3)


def test_cdpo_optimum_is_a_finite_margin():
    # d/dh of cdpo vanishes where sigma(u) = 1 - eps, i.e. u = log((1 - eps) / eps)
    u_star = math.log((1 - EPS) / EPS)
    h = torch.tensor([u_star / BETA], requires_grad=True)
    cdpo_loss(h, BETA, EPS).sum().backward()
    assert h.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_reference_log_probs_get_no_gradient():
    ref_chosen = torch.tensor([-1.5], requires_grad=True)
    policy_chosen, policy_rejected, _, ref_rejected = pair(requires_grad=True)
    preference_loss(
        "dpo", policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=BETA
    ).losses.sum().backward()
    assert ref_chosen.grad is None


def test_batch_losses_are_per_pair():
    policy = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    ref = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    losses = preference_loss("dpo", *policy, *ref, beta=BETA).losses
    # second pair: h = 0 - 1 = -1, u = -0.5
    assert losses.tolist() == pytest.approx([softplus(-U), softplus(0.5)], abs=1e-6)


@pytest.mark.parametrize(
    ("name", "eps", "message"),
    [
        ("nope", 0.0, "unknown preference loss"),
        ("robust", 0.5, "eps must be in"),
        ("cdpo", 1.0, "eps must be in"),
        ("cdpo", -0.1, "eps must be in"),
    ],
)
def test_bad_arguments_are_refused(name, eps, message):
    with pytest.raises(ValueError, match=message):
        preference_loss(name, *pair(), beta=BETA, eps=eps)


def test_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta must be > 0"):
        preference_loss("dpo", *pair(), beta=0.0)


def test_every_named_loss_runs():
    for name in LOSS_NAMES:
        assert math.isfinite(loss_of(name, eps=0.1 if name in ("cdpo", "robust") else 0.0))


def test_chunked_token_logps_match_log_softmax_with_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (37,))
    upstream = torch.randn(37)
    ours = token_logps(hidden, weight, targets, chunk_rows=5)
    (ours * upstream).sum().backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    naive = torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, targets[:, None]).squeeze(1)
    (naive * upstream).sum().backward()
    assert torch.allclose(ours, naive, atol=1e-5)
    assert torch.allclose(ours_grads[0], hidden.grad, atol=1e-5)
    assert torch.allclose(ours_grads[1], weight.grad, atol=1e-5)


def test_scored_tokens_sum_per_sequence():
    mask = torch.tensor([[True, False, True], [False, False, True]])
    scored = ScoredTokens(logps=torch.tensor([-1.0, -2.0, -4.0]), mask=mask)
    sums, counts = scored.per_sequence()
    assert sums.tolist() == [-3.0, -4.0]
    assert counts.tolist() == [2, 1]
