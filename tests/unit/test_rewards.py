"""Golden values for the five reward components, their registry and normalisation."""

import math

import pytest
import torch

from maestro_megatron.config import RewardsConfig
from maestro_megatron.rewards import (
    NEEDS_POLICY,
    NEEDS_PROXY,
    NEEDS_SCORER,
    REWARDS,
    RewardBatch,
    compute_rewards,
    ent_reward,
    fmt_reward,
    has_reference,
    len_reward,
    normalize_components,
    ppl_reward,
    pref_reward,
    reward_needs,
    scalar_reward,
    strip_answer,
)

COMPONENTS = ("ppl", "fmt", "ent", "len", "pref")


class OverlapScorer:
    """A real (lexical) scorer: token-set F1 between response and reference."""

    def score(self, prompts, responses, references):
        out = []
        for resp, ref in zip(responses, references):
            a, b = set(resp.split()), set((ref or "").split())
            common = len(a & b)
            out.append(0.0 if not common else 2 * common / (len(a) + len(b)))
        return torch.tensor(out)


def test_registry_has_the_five_and_their_needs():
    assert set(COMPONENTS) <= set(REWARDS)
    assert reward_needs(COMPONENTS) == {NEEDS_PROXY, NEEDS_SCORER, NEEDS_POLICY}
    assert reward_needs(("fmt", "len")) == frozenset()
    assert reward_needs(("ent",)) == {NEEDS_POLICY}
    assert reward_needs(("ppl",)) == {NEEDS_PROXY} and reward_needs(("pref",)) == {NEEDS_SCORER}


def test_ppl_golden_and_fallback():
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.9]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    assert torch.allclose(ppl_reward(lp, mask), torch.tensor([0.5, 0.25]))
    fb = torch.log(torch.tensor([[0.8, 0.2], [0.1, 0.1]]))
    fb_mask = torch.tensor([[1, 1], [1, 1]])
    got = ppl_reward(lp, mask, fb, fb_mask, has_reference=torch.tensor([True, False]))
    assert torch.allclose(got, torch.tensor([0.5, 0.1]))  # exp(mean(log .1, log .1)) = .1
    with pytest.raises(ValueError, match="fallback"):
        ppl_reward(lp, mask, has_reference=torch.tensor([True, False]))


def test_fmt_golden():
    pattern = RewardsConfig().fmt.pattern
    got = fmt_reward(["<think>a\nb</think><answer>42</answer>",
                      "<answer>42</answer>",
                      "<think>a</think><answer>42</answer> trailing text",
                      " <think></think> <answer>x</answer>\n"], pattern)
    assert got.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_ent_golden():
    v = 4
    ent = torch.tensor([[math.log(v), 0.0, 9.0]])  # mean over 2 tokens = log(V) / 2
    mask = torch.tensor([[1, 1, 0]])
    assert ent_reward(ent, mask, v, "maximize").item() == pytest.approx(0.5)
    assert ent_reward(ent, mask, v, "minimize").item() == pytest.approx(-0.5)
    assert ent_reward(ent, mask, v, "target", 0.2).item() == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="mode"):
        ent_reward(ent, mask, v, "sideways")


def test_len_golden():
    got = len_reward(torch.tensor([10, 64, 100]), target_tokens=64, max_tokens=256)
    assert got.tolist() == [0.0, 0.0, -36 / 256]


def test_pref_and_shape_check():
    got = pref_reward(OverlapScorer(), ["q", "q"], ["a b", "c"], ["a b", "a b"])
    assert got.tolist() == [1.0, 0.0]

    class Bad:
        def score(self, *_):
            return torch.zeros(3)

    with pytest.raises(ValueError, match="shape"):
        pref_reward(Bad(), ["q"], ["a"], [None])


def test_strip_answer():
    assert strip_answer("<think>t</think><answer>x</answer>", r"<answer>(.*?)</answer>") == (
        "<think>t</think>")


def test_compute_rewards_stacks_in_order():
    batch = RewardBatch(
        prompts=["q", "q"], responses=["<think>a</think><answer>b</answer>", "b"],
        references=["b", None], response_lengths=torch.tensor([70, 3]), vocab_size=4,
        entropy=torch.full((2, 2), math.log(4)), response_mask=torch.ones(2, 2),
        proxy_answer_logprobs=torch.log(torch.tensor([[0.5], [0.9]])),
        proxy_answer_mask=torch.ones(2, 1),
        proxy_response_logprobs=torch.log(torch.full((2, 2), 0.2)),
        pref_scorer=OverlapScorer())
    r = compute_rewards(batch, COMPONENTS, RewardsConfig())
    expected = torch.tensor([[0.5, 1.0, 1.0, -6 / 256, 0.0],
                             [0.2, 0.0, 1.0, 0.0, 0.0]])
    assert torch.allclose(r, expected)
    with pytest.raises(ValueError, match="entropy"):
        compute_rewards(RewardBatch(["q"], ["a"], [None], torch.tensor([1])), ("ent",),
                        RewardsConfig())


def test_normalize_golden():
    r = torch.tensor([[[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]])  # [N=1, G=3, K=2]
    g = normalize_components(r, "group")
    assert torch.allclose(g[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(g[0, :, 1], torch.zeros(3))  # std 0 -> 0
    two = torch.tensor([[[0.0], [2.0]], [[4.0], [6.0]]])  # batch: mean 3, std sqrt(20/3)
    b = normalize_components(two, "batch")
    assert torch.allclose(b.flatten(), (torch.tensor([0.0, 2.0, 4.0, 6.0]) - 3) /
                          math.sqrt(20 / 3))
    assert torch.equal(normalize_components(two, "none"), two)
    with pytest.raises(ValueError, match="normalization"):
        normalize_components(two, "zscore")


def test_ppl_never_scores_an_unscored_reference_as_one():
    """Landed code: an empty reference mask gave exp(mean over nothing = 0) = 1, the
    best possible r_ppl, to a response whose reference was cut off."""
    lp = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [-0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    got = ppl_reward(lp, mask, has_reference=torch.tensor([True, True, True]),
                     skipped=torch.tensor([False, True, False]))
    assert got.tolist() == pytest.approx([math.exp(-1.0), 0.0, math.exp(-0.5)])
    assert ppl_reward(lp[1:2], mask[1:2]).item() == 0.0  # empty mask, not skipped: 0 too
    assert [has_reference(r) for r in (None, "", "  \n", "x")] == [False, False, False, True]


def test_scalar_reward_golden():
    # 0.5 * 1 + 0.5 * 3 - 0.1 * 2 = 1.8
    got = scalar_reward(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 3.0]]),
                        torch.tensor([2.0]), 0.1)
    assert got.item() == pytest.approx(1.8)
