"""The named steps of one MAESTRO iteration (DESIGN.md section 2), one function each.

Each takes typed inputs and returns typed outputs; `loop.train` calls them in order.
Reward, scalarization and advantage steps run on last-pipeline-stage ranks, where the
logprobs, entropies and h live; each data-parallel rank handles whole groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from maestro_megatron.algorithms import group_advantages, kl_estimate, masked_seq_mean
from maestro_megatron.config.schema import Recipe
from maestro_megatron.megatron.conductor_replica import sample_actions
from maestro_megatron.megatron.forward import ForwardOutput, SequenceBatch, forward_logprobs
from maestro_megatron.megatron.parallel import ParallelGroups
from maestro_megatron.rewards import RewardBatch, compute_rewards, normalize_components
from maestro_megatron.rewards import scalar_reward as weighted_reward
from maestro_megatron.trainer.rollouts import (
    RolloutBatch,
    answer_sequences,
    engine_trainer_gap,
    response_sequences,
)


@dataclass
class Forwards:
    """Last-stage outputs (None on other stages) of the three forwards of a step."""

    sequences: SequenceBatch
    policy: ForwardOutput | None
    reference: ForwardOutput | None
    proxy: ForwardOutput | None
    answer_mask: torch.Tensor
    has_reference: torch.Tensor


@dataclass
class Scalarized:
    """Per-response results of scalarization (this DP rank's rows)."""

    rewards: torch.Tensor
    """[B, K] raw reward components."""
    weights: torch.Tensor
    """[B, K] weights used (w(a) for the Conductor)."""
    actions: torch.Tensor | None
    """[B] Conductor actions (None for baselines)."""
    kl_seq: torch.Tensor
    """[B] sequence KL(policy || reference), k-estimator mean over response tokens."""
    scores: torch.Tensor
    """[B] scalar reward R = w . r~ - beta KL (normalised components: mean ~ 0 per group)."""
    weighted_raw: torch.Tensor
    """[B] w . r with the RAW components (a progress measure; not used for training)."""
    advantages: torch.Tensor
    """[B] group-normalised advantages."""


def forward_step(models, local: RolloutBatch, recipe: Recipe, groups: ParallelGroups,
                 pad_id: int) -> Forwards:
    """Policy (old logprobs, entropy, h), reference (KL), and the r_ppl proxy forward."""
    seq_len, vocab = models.cfg.seq_length, models.cfg.vocab_size
    kw = dict(micro_batch_size=recipe.grpo.micro_batch_size, vocab_size=vocab)
    sequences = response_sequences(local, pad_id, seq_len)
    policy = forward_logprobs(models.policy, sequences, groups, **kw)
    reference = forward_logprobs(models.reference, sequences, groups, **kw)
    proxy = None
    answers, has_ref = None, torch.zeros(local.num_responses, dtype=torch.bool)
    if "ppl" in recipe.rewards.components:
        answers, has_ref = answer_sequences(local, models.tokenizer, pad_id, seq_len,
                                            recipe.rewards.ppl.answer_pattern)
        proxy = forward_logprobs(models.reference, answers, groups, **kw)
    mask = answers.response_mask if answers is not None else sequences.response_mask
    return Forwards(sequences, policy, reference, proxy, mask, has_ref)


def reward_step(recipe: Recipe, local: RolloutBatch, fwd: Forwards, scorer,
                vocab_size: int) -> torch.Tensor:
    """The K reward components of each response: -> r [B, K] (last stage only)."""
    batch = RewardBatch(
        prompts=local.per_response(local.prompts), responses=local.response_texts,
        references=local.per_response(local.references),
        response_lengths=torch.tensor([len(r) for r in local.response_ids]),
        vocab_size=vocab_size, entropy=fwd.policy.entropy,
        response_mask=fwd.sequences.response_mask,
        proxy_answer_logprobs=None if fwd.proxy is None else fwd.proxy.logprobs,
        proxy_answer_mask=fwd.answer_mask,
        proxy_response_logprobs=fwd.reference.logprobs, pref_scorer=scorer)
    return compute_rewards(batch, recipe.rewards.components, recipe.rewards)


def scalarize_step(recipe: Recipe, rewards: torch.Tensor, fwd: Forwards, scalarizer,
                   conductor, *, step: int, num_global: int, offset: int) -> Scalarized:
    """Weights (one Conductor draw per response, or a baseline), R, and advantages.

    Random draws come from one global stream per step sliced at `offset`, so the result
    does not depend on how responses are split over data-parallel ranks.
    """
    g, k = recipe.grpo, rewards.shape[1]
    rows = rewards.shape[0]
    normalised = normalize_components(rewards.view(-1, g.group_size, k),
                                      recipe.rewards.normalization).view(-1, k)
    actions = None
    if conductor is not None:
        actions = sample_actions(conductor, fwd.policy.h, seed=recipe.conductor.seed, step=step,
                                 num_global=num_global, offset=offset)
        weights = conductor.action_weights(actions).cpu()
    else:
        gen = torch.Generator().manual_seed(recipe.run.seed * 1_000_003 + step)
        weights, _ = scalarizer(None, num_global, gen)
        weights = weights[offset:offset + rows]
    kl_seq = masked_seq_mean(kl_estimate(fwd.policy.logprobs, fwd.reference.logprobs,
                                         g.kl_kind), fwd.sequences.response_mask).cpu()
    beta = 0.0 if g.kl_in_loss else g.kl_coef
    scores = weighted_reward(weights, normalised, kl_seq, beta)
    advantages = group_advantages(scores.view(-1, g.group_size), eps=g.adv_eps,
                                  normalize_std=g.normalize_std).flatten()
    weighted_raw = (weights.to(rewards.dtype) * rewards).sum(dim=-1)
    return Scalarized(rewards=rewards, weights=weights, actions=actions, kl_seq=kl_seq,
                      scores=scores, weighted_raw=weighted_raw, advantages=advantages)


def step_metrics(recipe: Recipe, local: RolloutBatch, sc: Scalarized, conductor, h,
                 fwd_logprobs: torch.Tensor, groups: ParallelGroups
                 ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Global means over the batch (gathered over DP) and per-task Conductor weights.

    reward/scalar is w . r on the raw components with the weights used (R itself is
    built from group-normalised components, so its mean is ~ -beta KL by construction:
    reported as reward/scalar_normalized); reward/mean_raw is the unweighted mean.
    rollout/logprob_gap_max (temperature 1, top-p 1 only): the largest |engine sampler
    logprob - trainer logprob| of any response token, a per-step check of the refit.
    Returns ({"reward/<name>", "reward/scalar", "reward/advantage_abs", "kl/seq",
    "response/length", "response/truncated", "conductor/policy_entropy", ...},
    {task: mean deterministic weights w(h) [K]}).
    """
    names = recipe.rewards.components
    lengths = torch.tensor([float(len(r)) for r in local.response_ids])
    sums = {f"reward/{n}": sc.rewards[:, i].sum().item() for i, n in enumerate(names)}
    sums.update({"reward/scalar": sc.weighted_raw.sum().item(),
                 "reward/mean_raw": sc.rewards.mean(dim=1).sum().item(),
                 "reward/scalar_normalized": sc.scores.sum().item(),
                 "reward/advantage_abs": sc.advantages.abs().sum().item(),
                 "kl/seq": sc.kl_seq.sum().item(), "response/length": lengths.sum().item(),
                 "response/truncated": float(sum(local.truncated))})
    sampling = recipe.rollout
    if sampling.temperature == 1.0 and sampling.top_p == 1.0:
        gap = engine_trainer_gap(local, fwd_logprobs)
        sums["rollout/logprob_gap_max"] = gap.max().item() if gap.numel() else 0.0
    tasks = local.per_response(local.tasks)
    weights = conductor.weights(h).cpu() if conductor is not None else sc.weights
    per_task: dict[str, list] = {}
    for i, task in enumerate(tasks):
        entry = per_task.setdefault(task, [torch.zeros(weights.shape[1]), 0, 0.0])
        entry[0] += weights[i]
        entry[1] += 1
        entry[2] += sc.weighted_raw[i].item()
    if conductor is not None:
        sums["conductor/policy_entropy"] = conductor.entropy(h).sum().item()
    local_view = (sums, {t: (v[0].tolist(), v[1], v[2]) for t, v in per_task.items()},
                  len(tasks))
    parts = [local_view]
    if groups.dp_size > 1:
        parts = [None] * groups.dp_size
        dist.all_gather_object(parts, local_view, group=groups.dp)
    count = sum(p[2] for p in parts)
    metrics = {key: sum(p[0][key] for p in parts) / count for key in sums
               if key != "rollout/logprob_gap_max"}
    if "rollout/logprob_gap_max" in sums:  # a max, not a mean
        metrics["rollout/logprob_gap_max"] = max(p[0]["rollout/logprob_gap_max"] for p in parts)
    merged: dict[str, list] = {}
    for _, tasks_part, _ in parts:
        for task, (wsum, n, ssum) in tasks_part.items():
            entry = merged.setdefault(task, [torch.zeros(len(wsum)), 0, 0.0])
            entry[0] += torch.tensor(wsum)
            entry[1] += n
            entry[2] += ssum
    task_weights = {}
    for task, (wsum, n, ssum) in sorted(merged.items()):
        task_weights[task] = (wsum / n).tolist()
        metrics[f"reward/scalar/{task}"] = ssum / n
        for j, name in enumerate(names):
            metrics[f"conductor/weight/{task}/{name}"] = float(wsum[j] / n)
    return metrics, task_weights
