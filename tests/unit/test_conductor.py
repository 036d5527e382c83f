"""The Conductor head, its loss, buffer, schedule and the meta-gradient claim."""

import math

import pytest
import torch

from maestro_megatron.algorithms import group_advantages
from maestro_megatron.conductor import (
    Conductor,
    MetaBuffer,
    TwoTimescale,
    conductor_loss,
    conductor_update,
    emphasis_templates,
    validate_templates,
)


def test_emphasis_templates_golden():
    t = emphasis_templates(5, rho=0.5)  # 0.1 everywhere, 0.6 on the diagonal
    assert t.shape == (5, 5)
    assert torch.allclose(t.diag(), torch.full((5,), 0.6))
    assert torch.allclose(t[0, 1:], torch.full((4,), 0.1))
    assert torch.allclose(t.sum(1), torch.ones(5))
    assert torch.allclose(emphasis_templates(3, rho=0.0), torch.full((3, 3), 1 / 3))


@pytest.mark.parametrize("bad, msg", [
    ([[0.5, 0.6]], "sums to"),
    ([[1.5, -0.5]], "negative"),
    ([], "non-empty"),
])
def test_templates_off_simplex_rejected(bad, msg):
    with pytest.raises(ValueError, match=msg):
        validate_templates(torch.tensor(bad))


def _golden_conductor(p_min=0.0):
    c = Conductor(2, emphasis_templates(2, 0.5), tau=2.0, p_min=p_min)
    with torch.no_grad():
        c.linear.weight.copy_(torch.eye(2))
    return c


def test_probs_and_weights_golden():
    h = torch.tensor([[2.0, 0.0]])  # logits (W h + b) / tau = (1, 0)
    e = math.e
    p = torch.tensor([e / (e + 1), 1 / (e + 1)])
    c = _golden_conductor()
    assert torch.allclose(c.probs(h)[0], p)
    # p_min 0.1, J 2: (1 - 0.2) p + 0.1
    p_floor = 0.8 * p + 0.1
    c = _golden_conductor(p_min=0.1)
    assert torch.allclose(c.probs(h)[0], p_floor)
    # w(h) = sum_a p(a) w(a), templates [[.75, .25], [.25, .75]]
    w = torch.tensor([0.75 * p_floor[0] + 0.25 * p_floor[1], 0.25 * p_floor[0] + 0.75 * p_floor[1]])
    assert torch.allclose(c.weights(h)[0], w)
    assert torch.allclose(c.entropy(h)[0], -(p_floor * p_floor.log()).sum())


def test_bad_head_args():
    with pytest.raises(ValueError, match="tau"):
        Conductor(4, emphasis_templates(2), tau=0.0)
    with pytest.raises(ValueError, match="p_min"):
        Conductor(4, emphasis_templates(2), p_min=0.5)


def test_sampling_is_seeded_and_follows_probs():
    c = _golden_conductor()
    h = torch.tensor([[2.0, 0.0]]).repeat(20000, 1)
    a1 = c.sample(h, torch.Generator().manual_seed(7))
    a2 = c.sample(h, torch.Generator().manual_seed(7))
    assert torch.equal(a1, a2)
    freq0 = (a1 == 0).float().mean().item()
    assert abs(freq0 - math.e / (math.e + 1)) < 0.02
    assert torch.equal(c.action_weights(torch.tensor([1])), torch.tensor([[0.25, 0.75]]))


def test_h_is_detached():
    c = Conductor(3, emphasis_templates(2))
    h = torch.randn(4, 3, requires_grad=True)
    loss, _ = conductor_loss(c, h, torch.tensor([0, 1, 0, 1]), torch.ones(4), 0.1)
    loss.backward()
    assert h.grad is None
    assert c.linear.bias.grad is not None


def test_conductor_loss_golden():
    # zero init -> uniform: log pi = -log 2, H = log 2.
    # L = -mean(A log pi(a) + c H) = -((1 - 1) (-log 2) / 2 + 0.1 log 2) = -0.1 log 2
    c = Conductor(3, emphasis_templates(2))
    h = torch.randn(2, 3)
    loss, metrics = conductor_loss(c, h, torch.tensor([0, 1]), torch.tensor([1.0, -1.0]), 0.1)
    assert loss.item() == pytest.approx(-0.1 * math.log(2))
    assert metrics["entropy"].item() == pytest.approx(math.log(2))
    loss.backward()
    # d/db of -(1/2) sum_i A_i log pi(a_i) at uniform = -(1/2) sum_i A_i (e_{a_i} - 1/2)
    #   = -(1/2) [(0.5, -0.5) + (0.5, -0.5)] = (-0.5, 0.5); the entropy term has 0 gradient
    assert torch.allclose(c.linear.bias.grad, torch.tensor([-0.5, 0.5]))


def _meta_grad(per_response: bool, seed=3):
    gen = torch.Generator().manual_seed(seed)
    num_prompts, group, d = 4, 6, 8
    c = Conductor(d, emphasis_templates(5), tau=1.0)
    with torch.no_grad():
        c.linear.weight.copy_(torch.randn(5, d, generator=gen))
    scores = torch.randn(num_prompts, group, generator=gen)
    adv = group_advantages(scores).flatten()
    if per_response:
        h = torch.randn(num_prompts * group, d, generator=gen)
        actions = c.sample(h, gen)
    else:  # one context and one action per prompt, shared by its G responses
        h = torch.randn(num_prompts, d, generator=gen).repeat_interleave(group, 0)
        actions = c.sample(h[::group], gen).repeat_interleave(group)
    loss, _ = conductor_loss(c, h, actions, adv, ent_coef=0.0)
    loss.backward()
    return torch.cat([c.linear.weight.grad.flatten(), c.linear.bias.grad])


def test_prompt_level_decision_has_zero_meta_gradient():
    """sum_j A_ij = 0, and a prompt-level decision has one log pi per group, so the
    REINFORCE gradient vanishes (MAESTRO's case for intra-group sampling)."""
    g = _meta_grad(per_response=False)
    assert g.abs().max().item() < 1e-6
    g = _meta_grad(per_response=True)
    assert g.abs().max().item() > 1e-2


def _mean_advantage_per_action(normalization: str) -> torch.Tensor:
    """[category, action] mean Dr.GRPO advantage of a response given its emphasis, over
    every equally likely assignment of 2 emphasis actions to the G = 2 responses of each
    group (a Conductor that cannot tell the responses apart). Category 0 stands high on
    component 0, category 1 on component 1; inside each group both components vary."""
    import itertools

    from maestro_megatron.rewards.normalize import normalize_components
    from maestro_megatron.rewards.scalarize import scalar_reward

    rewards = torch.tensor([[[0.9, 0.1], [0.7, 0.3]],     # category 0
                            [[0.1, 0.9], [0.3, 0.7]]])    # category 1: [N=2, G=2, K=2]
    z = normalize_components(rewards, normalization).reshape(4, 2)
    templates = emphasis_templates(2, rho=0.5)
    total, count = torch.zeros(2, 2), torch.zeros(2, 2)
    for actions in itertools.product(range(2), repeat=4):
        a = torch.tensor(actions)
        adv = group_advantages(scalar_reward(templates[a], z).view(2, 2), normalize_std=False)
        for row in range(4):
            total[row // 2, a[row]] += adv.flatten()[row]
            count[row // 2, a[row]] += 1
    return total / count


def test_group_normalised_components_give_no_per_category_meta_reward():
    """With per-group z-scored components every component has mean 0 inside each group,
    so an emphasis chosen without reading the response earns a mean advantage of exactly
    0 in every category: the Conductor can only learn a per-category pattern from what h
    says about each response's standing in its group. Batch z-scoring keeps the
    category's level: emphasising the component a category stands high on pays."""
    assert _mean_advantage_per_action("group").abs().max().item() < 1e-6
    batch = _mean_advantage_per_action("batch")
    assert batch[0, 0] > 0.1 and batch[0, 1] < -0.1  # category 0: emphasise component 0
    assert batch[1, 1] > 0.1 and batch[1, 0] < -0.1  # category 1: emphasise component 1


def test_buffer_append_window_state():
    buf = MetaBuffer()
    for i in range(3):
        buf.append(torch.full((2, 4), float(i)), torch.tensor([i, i]), torch.tensor([1.0, -1.0]))
    assert len(buf) == 6
    buf.keep_last(4)
    h, a, adv, task = buf.tensors()
    assert a.tolist() == [1, 1, 2, 2] and task.tolist() == [-1] * 4
    other = MetaBuffer()
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.tensors()[0], h)
    with pytest.raises(ValueError, match="batch sizes"):
        buf.append(torch.zeros(2, 4), torch.tensor([0]), torch.zeros(2))


def test_two_timescale_schedule_and_update():
    sched = TwoTimescale(update_every=3, epochs=4, buffer="clear")
    assert [s for s in range(1, 10) if sched.is_update_step(s)] == [3, 6, 9]
    c = Conductor(4, emphasis_templates(3))
    opt = torch.optim.Adam(c.parameters(), lr=0.1)
    buf = MetaBuffer()
    buf.append(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]),
               torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0, 0.0]))
    synced = []
    metrics = conductor_update(c, opt, buf, sched, 0.0, grad_sync=lambda m: synced.append(1))
    assert len(buf) == 0 and len(synced) == 4
    assert opt.state[c.linear.bias]["step"].item() == 4
    assert metrics["conductor/num_triples"] == 6.0
    # action 0 had positive advantage: its probability rose
    assert c.probs(torch.zeros(1, 4))[0, 0] > 1 / 3
    with pytest.raises(ValueError, match="empty"):
        conductor_update(c, opt, buf, sched, 0.0)
