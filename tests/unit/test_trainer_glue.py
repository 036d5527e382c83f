"""The trainer's glue with hand-worked values: packing, group slicing, the r_ppl view,
the reward step, the scalarize -> KL -> R -> advantage chain, metrics (and their merge
over simulated data-parallel ranks), the engine-vs-trainer logprob gap."""

from __future__ import annotations

import math

import pytest
import torch

from maestro_megatron.conductor import Conductor, emphasis_templates
from maestro_megatron.config.schema import GRPOConfig, LenConfig, Recipe, RewardsConfig
from maestro_megatron.data.packing import pack_sequences
from maestro_megatron.megatron.forward import ForwardOutput
from maestro_megatron.rewards import RewardBatch
from maestro_megatron.scalarizers import (
    ConductorScalarizer,
    EqualScalarizer,
    RandomScalarizer,
    ScalarizerContext,
    step_uniforms,
)
from maestro_megatron.trainer.rollouts import (
    RolloutBatch,
    answer_sequences,
    engine_trainer_gap,
    response_sequences,
)
from maestro_megatron.trainer.steps import (
    Forwards,
    merge_metric_views,
    metric_view,
    reward_step,
    scalarize_step,
)

NAMES = ("a", "b")


class CharTokenizer:
    """One token per character (ord): token counts are worked out by hand."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def make_batch() -> RolloutBatch:
    """2 prompts x G=2; response 2 (row 2) was truncated by the engine."""
    return RolloutBatch(
        prompts=["p0", "p1"], references=["ab", None], tasks=["t0", "t1"],
        prompt_ids=[[1, 2], [3]], response_ids=[[10, 11], [12], [13, 14, 15], [16]],
        response_texts=["<think>x</think><answer>y</answer>", "no format", "r2", "r3"],
        truncated=[False, False, True, False], group_size=2,
        rollout_logprobs=[[-0.5, -0.25], [-1.0], [-0.1, -0.2, -0.3], [-2.0]])


def test_pack_sequences_right_pads_and_cuts_at_seq_length():
    out = pack_sequences([[1, 2], [3]], [[4, 5, 6], [7]], pad_id=0, seq_length=4)
    assert out.tokens.tolist() == [[1, 2, 4, 5], [3, 7, 0, 0]]  # 6 cut off at length 4
    assert out.response_mask.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]


def test_groups_slice_takes_whole_groups():
    batch = make_batch()
    second = batch.groups_slice(1, 1)
    assert second.prompts == ["p1"] and second.references == [None]
    assert second.response_ids == [[13, 14, 15], [16]] and second.truncated == [True, False]
    assert second.rollout_logprobs == [[-0.1, -0.2, -0.3], [-2.0]]
    assert batch.per_response(batch.tasks) == ["t0", "t0", "t1", "t1"]


def test_response_sequences_and_a_response_cut_by_the_context():
    seqs = response_sequences(make_batch(), pad_id=0, seq_length=4)
    assert seqs.tokens.tolist() == [[1, 2, 10, 11], [1, 2, 12, 0], [3, 13, 14, 15], [3, 16, 0, 0]]
    assert seqs.response_mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0], [0, 1, 1, 1],
                                           [0, 1, 0, 0]]
    cut = response_sequences(make_batch(), pad_id=0, seq_length=3)
    assert cut.response_mask.tolist()[2] == [0, 1, 1]  # token 15 did not fit


def test_answer_sequences_mask_the_reference_tokens():
    view = answer_sequences(make_batch(), CharTokenizer(), 0, 64, r"<answer>(.*?)</answer>")
    seqs, has_ref = view.sequences, view.has_reference
    assert has_ref.tolist() == [True, True, False, False]
    assert view.trimmed.tolist() == [False] * 4 and view.skipped.tolist() == [False] * 4
    head = len("<think>x</think><answer>")  # 24 characters: reasoning + "<answer>"
    row = seqs.tokens[0].tolist()
    assert row[:2] == [1, 2] and row[2:2 + head] == [ord(c) for c in "<think>x</think><answer>"]
    assert seqs.response_mask[0].nonzero().flatten().tolist() == [2 + head, 3 + head]
    assert row[2 + head:4 + head] == [ord("a"), ord("b")]  # the reference "ab"
    assert seqs.response_mask[2].sum() == 0  # no reference: nothing scored


def test_a_long_reasoning_is_trimmed_so_the_whole_reference_fits():
    """Prompt 2 + reasoning 25 + "<answer>" 8 + "ab" 2 + "</answer>" 9 = 46 characters.
    At seq_length 40 the reasoning loses its first 6 characters; at 20 even no
    reasoning leaves room (2 + 8 + 2 + 9 = 21): skipped, r_ppl's mask is empty. The
    landed code cut the reference instead, and an empty mask scored exp(0) = 1."""
    batch = make_batch()
    batch.response_texts[0] = "<think>0123456789</think><answer>y</answer>"
    view = answer_sequences(batch, CharTokenizer(), 0, 40, r"<answer>(.*?)</answer>")
    row, mask = view.sequences.tokens[0].tolist(), view.sequences.response_mask[0]
    kept = "<think>0123456789</think>"[6:] + "<answer>"
    assert row[2:2 + len(kept)] == [ord(c) for c in kept]
    assert mask.nonzero().flatten().tolist() == [2 + len(kept), 3 + len(kept)]
    assert row[2 + len(kept):4 + len(kept)] == [ord("a"), ord("b")]
    assert view.trimmed.tolist() == [True, False, False, False]
    tight = answer_sequences(batch, CharTokenizer(), 0, 20, r"<answer>(.*?)</answer>")
    assert tight.skipped.tolist()[:2] == [True, True]
    assert tight.sequences.response_mask[:2].sum() == 0


def _forwards(batch: RolloutBatch, vocab: int) -> Forwards:
    seqs = response_sequences(batch, pad_id=0, seq_length=8)
    mask = seqs.response_mask
    entropy = mask * (math.log(vocab) / 2)  # half the maximum entropy on every token
    out = ForwardOutput(logprobs=-mask, entropy=entropy, h=torch.zeros(4, 3))
    return Forwards(seqs, out, out, None, None)


def test_reward_step_golden():
    recipe = Recipe(rewards=RewardsConfig(components=("fmt", "len", "ent"),
                                          len=LenConfig(target_tokens=1, max_tokens=4)))
    batch = make_batch()
    r = reward_step(recipe, batch, _forwards(batch, 16), scorer=None, vocab_size=16)
    # fmt: only response 0 is <think>..</think><answer>..</answer>;
    # len: -max(0, L - 1) / 4 with L = 2, 1, 3, 1; ent: (log 16 / 2) / log 16 = 0.5.
    assert r[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert r[:, 1].tolist() == [-0.25, 0.0, -0.5, 0.0]
    assert r[:, 2].tolist() == pytest.approx([0.5] * 4)


def _chain(scalarizer, rewards, kl_rows, step=1, uniforms=None, normalization="group"):
    """KL k1 per token = kl_rows[i] on 2 response tokens of each row."""
    rows = rewards.shape[0]
    mask = torch.tensor([[0.0, 1.0, 1.0]] * rows)
    ref = torch.zeros(rows, 3)
    logprobs = torch.tensor(kl_rows)[:, None] * mask
    grpo = GRPOConfig(group_size=2, kl_coef=0.5, kl_kind="k1")
    return scalarize_step(scalarizer, rewards, logprobs=logprobs, ref_logprobs=ref,
                          response_mask=mask, h=torch.zeros(rows, 4), step=step, grpo=grpo,
                          normalization=normalization,
                          uniforms=uniforms if uniforms is not None
                          else torch.zeros(rows, dtype=torch.float64))


def test_scalarize_step_golden():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    sc = _chain(EqualScalarizer(2), rewards, [0.0, 0.0, 0.2, 0.0])
    # group z-scores: comp a of group 0 is (1, 3) -> (-1/sqrt2, 1/sqrt2), the rest 0.
    # R = 0.5 * r~a + 0.5 * r~b - 0.5 * KL: (-0.35355, 0.35355, -0.1, 0).
    s = 0.5 / math.sqrt(2)
    assert sc.scores.tolist() == pytest.approx([-s, s, -0.1, 0.0], abs=1e-6)
    assert sc.kl_seq.tolist() == pytest.approx([0.0, 0.0, 0.2, 0.0])
    # Bessel std of (-s, s) is s * sqrt2 = 0.5; of (-0.1, 0) it is 0.1 / sqrt2.
    a0, a1 = s / (0.5 + 1e-6), 0.05 / (0.1 / math.sqrt(2) + 1e-6)
    assert sc.advantages.tolist() == pytest.approx([-a0, a0, -a1, a1], rel=1e-6)
    assert sc.weighted_raw.tolist() == pytest.approx([0.5, 1.5, 1.0, 1.0])
    assert sc.actions is None and torch.equal(sc.report_weights, sc.weights)


def test_a_group_with_one_distinct_answer_gets_zero_advantage():
    rewards = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [1.0, 0.0]])
    sc = _chain(EqualScalarizer(2), rewards, [0.3, 0.3, 0.0, 0.0])
    assert sc.advantages[:2].tolist() == [0.0, 0.0]  # same rewards, same KL
    assert sc.advantages[2:].abs().sum() == 0  # (0, 1) vs (1, 0): equal weighted sums


def test_conductor_actions_follow_the_uniform_stream():
    scal = ConductorScalarizer(Conductor(4, emphasis_templates(2, 0.5)), lr=0.1, ent_coef=0.0)
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # Zero-initialised Conductor: pi = (0.5, 0.5); a = #{CDF <= u}.
    sc = _chain(scal, rewards, [0.0] * 4,
                uniforms=torch.tensor([0.1, 0.7, 0.49, 0.5], dtype=torch.float64))
    assert sc.actions.tolist() == [0, 1, 0, 1]
    assert sc.weights.tolist() == [[0.75, 0.25], [0.25, 0.75], [0.75, 0.25], [0.25, 0.75]]
    assert sc.report_weights.tolist() == [[0.5, 0.5]] * 4
    assert sc.metric_sums["conductor/policy_entropy"] == pytest.approx(4 * math.log(2))
    # the outer loop: M = 1, so observe + update moves W and clears the buffer
    scal.observe(sc.context, sc.used, sc.advantages)
    assert len(scal.buffer) == 4
    metrics = scal.update(1)
    assert metrics["conductor/num_triples"] == 4 and len(scal.buffer) == 0
    assert scal.conductor.linear.bias.abs().sum() > 0


def test_step_uniforms_and_random_weights_do_not_depend_on_the_split():
    whole = step_uniforms(7, 3, 8, 0, 8)
    halves = torch.cat([step_uniforms(7, 3, 8, 0, 4), step_uniforms(7, 3, 8, 4, 4)])
    assert torch.equal(whole, halves)
    rand = RandomScalarizer(3, alpha=1.0)

    def ctx(u):
        return ScalarizerContext(step=3, rewards=torch.zeros(len(u), 3),
                                 normalized=torch.zeros(len(u), 3), uniforms=u, group_size=2)

    w = rand(ctx(whole)).weights
    assert torch.equal(w, torch.cat([rand(ctx(whole[:4])).weights,
                                     rand(ctx(whole[4:])).weights]))
    assert torch.allclose(w.sum(1), torch.ones(8)) and (w > 0).all()


def test_metrics_golden_and_equal_over_two_simulated_dp_ranks():
    batch = make_batch()
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    kl = [0.0, 0.0, 0.2, 0.0]
    sc = _chain(EqualScalarizer(2), rewards, kl)
    whole, weights = merge_metric_views(NAMES, [metric_view(NAMES, batch, sc)])
    assert whole["reward/a"] == 1.0 and whole["reward/b"] == 1.0
    assert whole["reward/scalar"] == 1.0  # mean of w . r = (0.5, 1.5, 1, 1)
    assert whole["response/length"] == 1.75 and whole["response/truncated"] == 0.25
    assert whole["kl/seq"] == pytest.approx(0.05)
    assert whole["reward/scalar/t0"] == 1.0 and whole["conductor/weight/t1/b"] == 0.5
    assert weights == {"t0": [0.5, 0.5], "t1": [0.5, 0.5]}
    parts = []
    for rank in range(2):  # each simulated DP rank scores its own group
        local = batch.groups_slice(rank, 1)
        sc_rank = _chain(EqualScalarizer(2), rewards[2 * rank:2 * rank + 2],
                         kl[2 * rank:2 * rank + 2])
        parts.append(metric_view(NAMES, local, sc_rank))
    split, split_weights = merge_metric_views(NAMES, parts)
    assert split.keys() == whole.keys() and split_weights == weights
    for key, value in whole.items():
        assert split[key] == pytest.approx(value, abs=1e-12), key


def test_engine_trainer_gap():
    batch = make_batch()
    seqs = response_sequences(batch, pad_id=0, seq_length=4)
    trainer = torch.zeros(4, 4)
    trainer[0, 2:4] = torch.tensor([-0.5, -0.2])  # token 11: engine -0.25, gap 0.05
    trainer[2, 1:4] = torch.tensor([-0.1, -0.2, -0.3])
    gaps = engine_trainer_gap(batch, trainer)
    # row 0: 0, 0.05; row 1: |0 - (-1)| = 1; row 2: 0, 0, 0; row 3: 2
    assert gaps.tolist() == pytest.approx([0.0, 0.05, 1.0, 0.0, 0.0, 0.0, 2.0], abs=1e-6)
    assert seqs.tokens.shape == (4, 4)


def test_a_nonfinite_reward_is_an_error_naming_component_and_sample():
    from maestro_megatron.rewards import RewardError, compute_rewards, register_reward
    from maestro_megatron.rewards.components import REWARDS

    @register_reward("_nan_on_second")
    def _nan(batch, opts):
        return torch.tensor([0.5, float("nan"), 0.25, 0.0])

    class Boom:
        def score(self, prompts, responses, references):
            raise RuntimeError("reward model out of memory")

    try:
        batch = RewardBatch(prompts=["p0", "p0", "p1", "p1"], responses=["a", "b", "c", "d"],
                            references=[None] * 4, response_lengths=torch.ones(4),
                            pref_scorer=Boom())
        with pytest.raises(RewardError, match=r"'_nan_on_second' is nan for response 1 .*'b'"):
            compute_rewards(batch, ("_nan_on_second",), RewardsConfig())
        with pytest.raises(RewardError, match="'pref' failed: reward model out of memory"):
            compute_rewards(batch, ("pref",), RewardsConfig())
        skip = RewardsConfig(on_nonfinite="skip")
        r = compute_rewards(batch, ("_nan_on_second", "pref"), skip)
        assert torch.isnan(r[1, 0]) and torch.isnan(r[:, 1]).all()  # pref: whole column
        r = compute_rewards(batch, ("_nan_on_second",), skip)
    finally:
        REWARDS.pop("_nan_on_second")
    # skip: response 1 gets advantage 0 and is counted; its group peer is scored alone
    sc = _chain(EqualScalarizer(1), r, [0.0, 0.0, 0.0, 0.0])
    assert sc.skipped.tolist() == [False, True, False, False]
    assert sc.advantages[1] == 0 and torch.isfinite(sc.advantages).all()
    assert sc.advantages[2:].tolist() == pytest.approx([0.7071, -0.7071], abs=1e-3)
    view, _ = merge_metric_views(("x",), [metric_view(("x",), make_batch(), sc)])
    assert view["reward/nonfinite_skipped"] == 0.25


def test_a_failure_names_its_stage_and_step():
    from maestro_megatron.trainer.loop import Timer

    timer = Timer(step=7)
    with timer("train"):
        pass
    assert "timing/train" in timer.times
    with pytest.raises(RuntimeError) as info:
        with timer("rollout"):
            raise RuntimeError("EngineCore died")
    assert "stage 'rollout' of step 7" in "\n".join(info.value.__notes__)


@pytest.mark.parametrize("overrides,needed", [
    ({}, False),
    ({"grpo": {"num_minibatches": 2}}, True),
    ({"grpo": {"ppo_epochs": 2}}, True),
    ({"grpo": {"kl_in_loss": False}}, True),
    ({"grpo": {"mask_truncated": True}}, True),
    ({"rewards": {"components": ["fmt", "ent"]}}, True),
    ({"scalarizer": {"name": "conductor"}}, True),
])
def test_policy_forward_needed_only_off_policy_or_when_read_first(overrides, needed):
    from dataclasses import replace

    from maestro_megatron.trainer.steps import policy_forward_needed

    recipe = Recipe()
    base = {"grpo": {"num_minibatches": 1, "ppo_epochs": 1, "kl_in_loss": True},
            "rewards": {"components": ["fmt", "len"]}, "scalarizer": {"name": "equal"}}
    for section in base.keys() | overrides.keys():
        values = {**base.get(section, {}), **overrides.get(section, {})}
        recipe = replace(recipe, **{section: replace(getattr(recipe, section), **values)})
    assert policy_forward_needed(recipe) is needed
