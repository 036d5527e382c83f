"""The baselines as their papers define them, with values worked by hand:
NOVER's reward (arXiv 2505.16022), EM-RL's sequence reward (arXiv 2505.15134), GDPO's
batch-whitened advantage (arXiv 2601.05242)."""

from __future__ import annotations

import math

import pytest
import torch

from maestro_megatron.algorithms import ADVANTAGE_ESTIMATORS, batch_whitened
from maestro_megatron.config import load_recipe
from maestro_megatron.rewards import RewardBatch, compute_rewards
from maestro_megatron.rewards.components import seq_logprob_reward
from maestro_megatron.rewards.nover import (
    length_normaliser,
    nover_reward,
    reasoning_perplexity,
)


def test_length_normaliser_uses_log10():
    got = length_normaliser(torch.tensor([0, 1, 5, 10, 100]))
    assert got.tolist() == pytest.approx([1.0, 1.0, 1.0 + math.log10(5), 2.0, 3.0])


def test_nover_reward_golden():
    # one group of 4: reasoning lengths |t| and mean reference log-probs per response
    t = torch.tensor([10, 100, 1, 5])
    lp = torch.tensor([[-1.0, -1.0], [-2.0, -2.0], [-0.6, -0.6], [-0.1, -0.1]])
    mask = torch.ones(4, 2)
    ppl = reasoning_perplexity(lp, mask, t)
    # N = 2, 3, 1, 1 + log10 5 -> P_r = e^(1/2), e^(2/3), e^0.6, e^(0.1 / 1.699)
    assert ppl.tolist() == pytest.approx([math.exp(0.5), math.exp(2 / 3), math.exp(0.6),
                                          math.exp(0.1 / (1 + math.log10(5)))])
    fmt = torch.tensor([1.0, 1.0, 1.0, 0.0])  # response 3 fails the format: gated out
    scored = torch.ones(4, dtype=torch.bool)
    got = nover_reward(fmt.view(1, 4), ppl.view(1, 4), t.view(1, 4), scored.view(1, 4),
                       w_format=1.0, w_reasoning=1.0, w_efficiency=0.1)
    # valid 0, 1, 2 ranked by P_r: 0 (1.649) < 2 (1.822) < 1 (1.948) -> R_r 1, 1/3, 2/3.
    # R_e: 0 beats 1 (shorter and lower P_r), not 2 -> 1/2; 1 -> 0; 2 beats 1 -> 1/2.
    expected = [1 + 1 + 0.05, 1 + 1 / 3, 1 + 2 / 3 + 0.05, 0.0]
    assert got.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    # an unscored reference (cut off) is invalid too, never the best
    cut = nover_reward(fmt.view(1, 4), ppl.view(1, 4), t.view(1, 4),
                       torch.tensor([[False, True, True, True]]), w_efficiency=0.1)
    assert cut.flatten()[0].item() == 1.0  # w_f R_f only


def test_nover_component_through_the_registry():
    recipe = load_recipe("recipes/tiny_cpu_nover.yaml")
    assert recipe.rewards.ppl.proxy == "policy" and recipe.scalarizer.component == "nover"
    batch = RewardBatch(
        prompts=["p"] * 2, responses=["<think>a b</think><answer>x</answer>", "no tags"],
        references=["x", "x"], response_lengths=torch.tensor([5, 2]),
        proxy_answer_logprobs=torch.tensor([[-1.0], [-1.0]]),
        proxy_answer_mask=torch.ones(2, 1), reasoning_tokens=torch.tensor([2, 0]),
        group_size=2)
    r = compute_rewards(batch, ("nover",), recipe.rewards)
    assert r[:, 0].tolist() == pytest.approx([1.0 + 1.0 + 0.0, 0.0])


def test_em_sequence_reward_is_the_mean_sampled_logprob():
    lp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert seq_logprob_reward(lp, mask).tolist() == [-1.5, -0.5]


def test_gdpo_whitens_the_summed_advantage_over_the_batch():
    scores = torch.tensor([[1.0, 3.0], [2.0, 6.0]])
    std = math.sqrt(14 / 3)  # deviations -2, 0, -1, 3 from the mean 3; Bessel
    got = batch_whitened(scores, eps=0.0)
    assert got.flatten().tolist() == pytest.approx([-2 / std, 0.0, -1 / std, 3 / std])
    assert ADVANTAGE_ESTIMATORS["gdpo"](scores, eps=0.0, normalize_std=True).tolist() == \
        got.tolist()

    def both_ranks(t):
        """What summing over two DP ranks returns: (sum, count), then squares."""
        if t.numel() == 2:
            return torch.tensor([scores.sum().item(), 4.0], dtype=torch.float64)
        return ((scores.double().flatten() - 3.0) ** 2).sum().reshape(1)

    halves = [batch_whitened(part, eps=0.0, reduce_sum=both_ranks)
              for part in (scores[:1], scores[1:])]
    assert torch.cat(halves).flatten().tolist() == pytest.approx(got.flatten().tolist())
