"""Golden values for the GRPO loss and the global-count contract."""

import math

import pytest
import torch

from maestro_megatron.algorithms import LOSS_AGGREGATIONS, policy_loss

# Two sequences, ratios (1.0, 1.5, 0.5); seq 0 has A=+1 (3 tokens), seq 1 A=-1 (2 tokens).
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [1.0, 1.5, 0.5]])
LOGP = torch.log(RATIOS)
OLD = torch.zeros(2, 3)
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# eps 0.2, per token max(-A r, -A clip(r, 0.8, 1.2)):
#   seq 0 (A=+1): r=1 -> -1; r=1.5 -> max(-1.5, -1.2) = -1.2; r=0.5 -> max(-0.5, -0.8) = -0.5
#   seq 1 (A=-1): r=1 -> 1; r=1.5 -> max(1.5, 1.2) = 1.5; (r=0.5 masked)
SEQ0, SEQ1 = [-1.0, -1.2, -0.5], [1.0, 1.5]


def _loss(**kw):
    return policy_loss(LOGP, OLD, ADV, MASK, **kw)


def test_token_mean_golden():
    loss, metrics = _loss()
    assert loss.item() == pytest.approx((sum(SEQ0) + sum(SEQ1)) / 5)  # -0.2 / 5 = -0.04
    assert loss.item() == pytest.approx(-0.04)
    # only seq 0's r=1.5 token is clipped (-1.2 > -1.5): 1 of 5 tokens
    assert metrics["clip_frac"].item() == pytest.approx(0.2)


def test_seq_mean_token_mean_golden():
    loss, _ = _loss(agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-2.7 / 3 + 2.5 / 2) / 2)  # 0.175


def test_seq_mean_token_sum_norm_golden():
    loss, _ = _loss(agg="seq-mean-token-sum-norm")
    assert loss.item() == pytest.approx((-2.7 / 3 + 2.5 / 3) / 2)
    loss, _ = _loss(agg="seq-mean-token-sum-norm", max_len=10)
    assert loss.item() == pytest.approx((-2.7 / 10 + 2.5 / 10) / 2)


def test_clip_higher_golden():
    # eps_high 0.6: seq 0's r=1.5 is inside (0.8, 1.6) -> -1.5; sum = -3.0 + 2.5
    loss, metrics = _loss(eps_high=0.6)
    assert loss.item() == pytest.approx(-0.5 / 5)
    assert metrics["clip_frac"].item() == 0.0


def test_dual_clip_golden():
    # c = 1.3 caps seq 1 (A=-1) tokens at 1.3: 1.5 -> 1.3; sum = -2.7 + 2.3
    loss, metrics = _loss(dual_clip=1.3)
    assert loss.item() == pytest.approx(-0.4 / 5)
    assert metrics["dual_clip_frac"].item() == pytest.approx(0.2)
    # positive advantages are never dual-clipped
    loss_pos, _ = policy_loss(LOGP[:1], OLD[:1], ADV[:1], MASK[:1], dual_clip=1.3)
    assert loss_pos.item() == pytest.approx(-2.7 / 3)


def test_global_counts_golden():
    loss, _ = _loss(num_global_tokens=10)
    assert loss.item() == pytest.approx(-0.2 / 10)
    loss, _ = _loss(agg="seq-mean-token-mean", num_global_seqs=4)
    assert loss.item() == pytest.approx((-0.9 + 1.25) / 4)


def test_fully_masked_sequence_not_counted():
    logp = torch.cat([LOGP, torch.zeros(1, 3)])
    old = torch.zeros(3, 3)
    adv = torch.tensor([1.0, -1.0, 5.0])
    mask = torch.cat([MASK, torch.zeros(1, 3)])
    for agg, expected in (("seq-mean-token-mean", 0.175), ("token-mean", -0.04),
                          ("seq-mean-token-sum-norm", (-0.9 + 2.5 / 3) / 2)):
        loss, _ = policy_loss(logp, old, adv, mask, agg=agg)
        assert loss.item() == pytest.approx(expected), agg


def test_ratio_one_gives_minus_mean_advantage():
    adv = torch.tensor([0.5, -2.0])
    loss, _ = policy_loss(OLD, OLD, adv, MASK)
    assert loss.item() == pytest.approx(-(0.5 * 3 - 2.0 * 2) / 5)


def _random_batch(seed=0, batch=8, seq=6):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, seq, generator=gen)
    old = logp + 0.3 * torch.randn(batch, seq, generator=gen)
    adv = torch.randn(batch, generator=gen)
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
    lengths[3] = 0  # one fully masked sequence
    mask = (torch.arange(seq)[None] < lengths[:, None]).float()
    return logp, old, adv, mask


@pytest.mark.parametrize("agg", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("dual_clip", [None, 2.0])
def test_micro_batch_and_dp_split_is_exact(agg, dual_clip):
    """Split over 2 simulated DP ranks x 2 micro-batches with global counts: the summed
    loss and the summed gradient equal the whole batch's."""
    logp, old, adv, mask = _random_batch()
    kw = dict(agg=agg, dual_clip=dual_clip, eps_high=0.28)
    whole = logp.clone().requires_grad_(True)
    loss_whole, _ = policy_loss(whole, old, adv, mask, **kw)
    loss_whole.backward()

    num_tokens = mask.sum()
    num_seqs = (mask.sum(1) > 0).sum()
    split = logp.clone().requires_grad_(True)
    total = 0.0
    for rank in range(2):
        for micro in range(2):
            sl = slice(rank * 4 + micro * 2, rank * 4 + micro * 2 + 2)
            part, _ = policy_loss(split[sl], old[sl], adv[sl], mask[sl], **kw,
                                  num_global_tokens=num_tokens, num_global_seqs=num_seqs,
                                  max_len=mask.shape[1])
            part.backward()  # gradients accumulate = the DP all-reduce SUM
            total = total + part.detach()
    assert torch.allclose(total, loss_whole.detach(), atol=1e-7, rtol=0)
    assert torch.allclose(split.grad, whole.grad, atol=1e-7, rtol=0)
    assert whole.grad.abs().sum() > 0


def test_local_counts_do_not_split_exactly():
    """Without global counts the split is NOT the whole (why the contract exists)."""
    logp, old, adv, mask = _random_batch(seed=1)
    whole, _ = policy_loss(logp, old, adv, mask)
    parts = sum(policy_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2])[0]
                for i in range(0, 8, 2))
    assert not math.isclose(float(parts), float(whole), abs_tol=1e-4)


def test_bad_agg():
    with pytest.raises(ValueError, match="token-sum"):
        _loss(agg="token-sum")
