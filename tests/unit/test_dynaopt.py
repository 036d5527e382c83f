"""DYNAOPT (arXiv 2403.13578) as a scalarizer: Exp3 and the stage reward worked by hand,
the stage cadence, data-parallel independence and the checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch

from maestro_megatron.config import load_recipe
from maestro_megatron.scalarizers import (
    SCALARIZERS,
    ReplicaSync,
    ScalarizerContext,
    build_scalarizer,
    step_uniforms,
)
from maestro_megatron.scalarizers.dynaopt import (
    DynaoptScalarizer,
    draw_arm,
    exp3_probs,
    exp3_update,
    moments,
    stage_reward,
)


def test_exp3_update_golden():
    # 3 arms (K = 2 components + "no change"), gamma 0.3, L = 0: p = 0.7/3 + 0.1 = 1/3.
    logw = torch.zeros(3, dtype=torch.float64)
    assert exp3_probs(logw, 0.3).tolist() == pytest.approx([1 / 3] * 3)
    # pull arm 0, reward 0.6: r_hat = 0.6 / (1/3) = 1.8; L_0 += 0.3 * 1.8 / 3 = 0.18
    logw = exp3_update(logw, 0, 0.6, 0.3)
    assert logw.tolist() == pytest.approx([0.18, 0.0, 0.0])
    # softmax: e^0.18 = 1.197217 over 3.197217 -> 0.374456, the others 0.312772;
    # p = 0.7 * that + 0.1
    assert exp3_probs(logw, 0.3).tolist() == pytest.approx([0.362119, 0.318940, 0.318940],
                                                           abs=1e-6)
    # pull arm 1 with reward -0.5 at p_1 = 0.318940: L_1 += 0.3 * (-0.5 / 0.318940) / 3
    logw = exp3_update(logw, 1, -0.5, 0.3)
    assert logw.tolist() == pytest.approx([0.18, -0.156769, 0.0], abs=1e-6)


def test_stage_reward_golden():
    # component A: previous stage {0, 1, 0, 1} (mean 0.5), this stage {1, 1, 1, 0}
    # (mean 0.75); pooled over the 8 values: mean 5/8, E[x^2] 5/8, var 15/64, sd
    # sqrt(15)/8 -> z_A = 0.25 / (sqrt(15)/8) = 2/sqrt(15). B is constant: sd 0 -> z_B 0.
    prev = moments(torch.tensor([[0.0, 2.0], [1.0, 2.0], [0.0, 2.0], [1.0, 2.0]]))
    cur = moments(torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 2.0]]))
    reward, z = stage_reward(prev, cur)
    assert z.tolist() == pytest.approx([2 / math.sqrt(15), 0.0])
    assert reward == pytest.approx(1 / math.sqrt(15))  # mean over the K = 2 components
    both_up = moments(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    big, z = stage_reward(both_up, moments(torch.tensor([[9.0, 9.0]] * 4)))
    assert z.min() > 1.0 and big == 1.0  # clipped to [-1, 1]


def test_draw_arm_is_the_inverse_cdf():
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    assert [draw_arm(probs, u) for u in (0.0, 0.19, 0.2, 0.69, 0.7, 0.999999)] == \
        [0, 0, 1, 1, 2, 2]


def _ctx(step: int, rewards: torch.Tensor) -> ScalarizerContext:
    return ScalarizerContext(step=step, rewards=rewards, normalized=rewards,
                             uniforms=torch.zeros(rewards.shape[0], dtype=torch.float64),
                             group_size=2)


def _step(scalarizer, step: int, rewards: torch.Tensor, sync=ReplicaSync()):
    ctx = _ctx(step, rewards)
    used = scalarizer(ctx)
    scalarizer.observe(ctx, used, torch.zeros(rewards.shape[0]))
    return used.weights, scalarizer.update(step, sync)


def _batch(step: int) -> torch.Tensor:
    """Component "up" rises with the step, "flat" stays 0 (4 responses)."""
    return torch.tensor([[step + 0.1 * i, 0.0] for i in range(4)])


def _scalarizer(**kw) -> DynaoptScalarizer:
    return DynaoptScalarizer(("up", "flat"), stage_steps=2, gamma=0.3, step_size=0.5,
                             seed=7, num_global=8, **kw)


def test_one_stage_by_hand():
    s = _scalarizer()
    u = step_uniforms(7, 1, 8, 0, 1)[0].item()  # the global stream's entry 0 at step 1
    arm = math.floor(u * 3)  # arms equally likely before any feedback
    weights, metrics = _step(s, 1, _batch(1))
    assert metrics == {"dynaopt/arm": float(arm)}
    expected = [0.5, 0.5]
    if arm < 2:  # "raise weight arm": log w += 0.5, renormalised
        expected[arm] = math.exp(0.5) / (math.exp(0.5) + 1)
        expected[1 - arm] = 1 - expected[arm]
    assert weights.shape == (4, 2) and weights[0].tolist() == pytest.approx(expected)
    assert torch.equal(weights, weights[:1].expand(4, 2))  # one vector for every response
    weights2, metrics = _step(s, 2, _batch(2))
    assert torch.equal(weights2, weights)  # no move inside a stage
    # stage 1 = steps 1-2 against step 1 alone: up {1.0,1.1,1.2,1.3} vs those and
    # {2.0, ..., 2.3}; flat contributes z = 0; r = z_up / 2 computed from the moments
    r, z = stage_reward(moments(_batch(1)), moments(torch.cat([_batch(1), _batch(2)])))
    assert z[0] > 0 and z[1] == 0 and metrics["dynaopt/bandit_reward"] == pytest.approx(r)
    assert s.arm_log_weights[arm].item() == pytest.approx(0.3 * (r * 3) / 3)
    assert metrics[f"dynaopt/arm_prob/{s.arm_names[arm]}"] > 1 / 3
    # stage 2 draws again at its first step (step 3), from the updated probabilities
    _step(s, 3, _batch(3))
    assert s.arm_stage == 1 and int(s.pulls.sum()) == 2


def test_data_parallel_split_gives_the_same_state():
    """Two DP ranks with half the responses each (the sum over ranks done by hand)
    end with exactly the state of one rank holding all of them."""
    whole, ranks = _scalarizer(), [_scalarizer(), _scalarizer()]
    for step in range(1, 6):
        batch = _batch(step) * torch.tensor([1.0, 0.0]) + torch.rand(4, 2)
        _step(whole, step, batch)
        ctxs = [_ctx(step, batch[:2]), _ctx(step, batch[2:])]
        for s, ctx in zip(ranks, ctxs):
            s.observe(ctx, s(ctx), torch.zeros(2))
        total = ranks[0]._pending + ranks[1]._pending  # what the all-reduce returns
        for s in ranks:
            s.update(step, ReplicaSync(sum_over_dp=lambda t, total=total: total.clone()))
    for s in ranks:
        for key, value in whole.state_dict().items():
            got = s.state_dict()[key]
            assert torch.allclose(got, value) if torch.is_tensor(value) else got == value


def test_state_dict_round_trip(tmp_path):
    a = _scalarizer(initial=[0.25, 0.75])
    for step in range(1, 4):  # mid-stage 2: an arm pulled, moments accumulating
        _step(a, step, _batch(step))
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = _scalarizer(initial=[0.25, 0.75])
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=False))
    for step in range(4, 9):
        wa, ma = _step(a, step, _batch(step))
        wb, mb = _step(b, step, _batch(step))
        assert torch.equal(wa, wb) and ma == mb
    assert torch.equal(a.arm_log_weights, b.arm_log_weights) and a.arm_log_weights.any()
    with pytest.raises(ValueError, match="rewards.components"):
        DynaoptScalarizer(("x", "y")).load_state_dict(a.state_dict())


def test_recipe_builds_and_checks():
    recipe = load_recipe("recipes/tiny_cpu_dynaopt.yaml")
    s = build_scalarizer(recipe, d_model=8)
    assert SCALARIZERS["dynaopt"] is DynaoptScalarizer and s.stage_steps == 5
    assert s.weights().tolist() == pytest.approx([0.2] * 5)
    assert s.num_global == 32  # N * G: the step's global stream
    for override, key in ((["dynaopt.gamma=0"], "dynaopt.gamma"),
                          (["dynaopt.stage_steps=0"], "dynaopt.stage_steps"),
                          (["dynaopt.initial_weights=[0.5, 0.5]"], "dynaopt.initial_weights")):
        with pytest.raises(ValueError, match=key):
            load_recipe("recipes/tiny_cpu_dynaopt.yaml", override)
