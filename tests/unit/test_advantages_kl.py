"""Golden values for group advantages and the KL estimators, worked by hand."""

import math

import torch

from maestro_megatron.algorithms import group_advantages, kl_estimate, masked_seq_mean


def test_group_advantages_golden():
    # group 0: mean 2, Bessel std sqrt((1 + 0 + 1) / 2) = 1 -> (-1, 0, 1)
    # group 1: constant -> 0 (not NaN)
    scores = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    adv = group_advantages(scores, eps=0.0)
    assert torch.allclose(adv, torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))


def test_group_advantages_two_and_eps():
    # [0, 4]: mean 2, std sqrt((4 + 4) / 1) = 2*sqrt(2); A = +-2 / (2 sqrt 2 + 0.1)
    adv = group_advantages(torch.tensor([[0.0, 4.0]]), eps=0.1)
    expected = 2.0 / (2.0 * math.sqrt(2.0) + 0.1)
    assert torch.allclose(adv, torch.tensor([[-expected, expected]]))


def test_dr_grpo_no_std():
    adv = group_advantages(torch.tensor([[0.0, 4.0, 8.0]]), normalize_std=False)
    assert torch.allclose(adv, torch.tensor([[-4.0, 0.0, 4.0]]))


def test_group_of_one_no_nan():
    for norm in (True, False):
        adv = group_advantages(torch.tensor([[3.0], [7.0]]), normalize_std=norm)
        assert torch.equal(adv, torch.zeros(2, 1))


def test_kl_estimators_golden():
    # logp = log 0.5, ref = log 0.25: delta = log 2
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    ln2 = math.log(2.0)
    assert kl_estimate(logp, ref, "k1").item() == torch.tensor(ln2).item()
    assert abs(kl_estimate(logp, ref, "k2").item() - 0.5 * ln2**2) < 1e-7
    # k3 = exp(ref - logp) - (ref - logp) - 1 = 0.5 + ln2 - 1
    assert abs(kl_estimate(logp, ref, "k3").item() - (0.5 + ln2 - 1.0)) < 1e-7
    # identical distributions: every estimator is 0
    for kind in ("k1", "k2", "k3"):
        assert kl_estimate(ref, ref, kind).item() == 0.0


def test_kl_unknown_kind():
    try:
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")
    except ValueError as exc:
        assert "k4" in str(exc)
    else:
        raise AssertionError("k4 accepted")


def test_masked_seq_mean():
    values = torch.tensor([[1.0, 3.0, 100.0], [5.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert torch.equal(masked_seq_mean(values, mask), torch.tensor([2.0, 5.0, 0.0]))
