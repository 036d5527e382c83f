"""The named steps of one MAESTRO iteration (DESIGN.md section 2), one function each.

Each takes typed inputs and returns typed outputs; `loop.run_step` calls them in order.
Reward, scalarization and advantage steps run on last-pipeline-stage ranks, where the
logprobs, entropies and h live; each data-parallel rank handles whole groups.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maestro_megatron.config.schema import Recipe
from maestro_megatron.data.packing import SequenceBatch, sequence_pad_multiple
from maestro_megatron.megatron.forward import ForwardOutput, forward_logprobs
from maestro_megatron.megatron.offload import resident
from maestro_megatron.megatron.parallel import ParallelGroups
from maestro_megatron.rewards import (
    NEEDS_POLICY,
    NEEDS_PROXY,
    RewardBatch,
    compute_rewards,
    reward_needs,
)
from maestro_megatron.scalarizers import SCALARIZERS, Scalarized, scalarize_step
from maestro_megatron.trainer.rollouts import (
    AnswerView,
    RolloutBatch,
    answer_sequences,
    engine_trainer_gap,
    response_sequences,
)

__all__ = ["Forwards", "MetricView", "Scalarized", "forward_step", "merge_metric_views",
           "metric_view", "policy_forward_needed", "reward_step", "rollout_records",
           "scalarize_step", "step_metrics"]


@dataclass
class Forwards:
    """Last-stage outputs (None on other stages) of the three forwards of a step."""

    sequences: SequenceBatch
    policy: ForwardOutput | None
    """None also when the step needs no policy forward before the update
    (`policy_forward_needed`); the loop then sets it from the update's own pass."""
    reference: ForwardOutput | None
    proxy: ForwardOutput | None
    """r_ppl's forward of prompt + reasoning + reference (None when no component needs it)."""
    answers: AnswerView | None
    """r_ppl's view (reference mask, trimmed / skipped rows); None without a proxy."""


@contextmanager
def timed(times: dict[str, float] | None, name: str):
    """times["timing/<name>"] = the block's wall-clock seconds (nothing when None): the
    sub-stage timings the benchmarks read from metrics.jsonl (bench/step_anatomy.py)."""
    start = time.perf_counter()
    yield
    if times is not None:
        times[f"timing/{name}"] = time.perf_counter() - start


def policy_forward_needed(recipe: Recipe) -> bool:
    """Whether a step needs the policy's forward before its update.

    Not when the update is one optimizer step over the whole batch (ppo_epochs 1, one
    mini-batch, no truncation mask) with the KL in the loss, and neither a reward
    component (NEEDS_POLICY) nor the scalarizer (h) reads the policy's outputs first:
    the old log-probs are then the update pass's own, detached (ratio 1, as a separate
    forward of the same weights gives), and that pass's outputs (log-probs, entropy,
    h of the weights before the update) feed the step's KL and refit-check metrics.
    The same answer on every rank (from the recipe alone).
    """
    g = recipe.grpo
    on_policy = g.ppo_epochs == 1 and g.num_minibatches == 1 and not g.mask_truncated
    return not (on_policy and g.kl_in_loss and not SCALARIZERS[recipe.scalarizer.name].needs_hidden
                and NEEDS_POLICY not in reward_needs(recipe.rewards.components))


def forward_step(models, local: RolloutBatch, recipe: Recipe, groups: ParallelGroups,
                 pad_id: int, times: dict[str, float] | None = None,
                 policy: bool = True) -> Forwards:
    """Policy (old logprobs, entropy, h; skipped when `policy` is False), reference
    (KL), and the r_ppl proxy forward; times: see `timed` (forward/policy,
    forward/reference, forward/proxy)."""
    seq_len, vocab = models.cfg.seq_length, models.cfg.vocab_size
    kw = dict(micro_batch_size=recipe.grpo.micro_batch_size, vocab_size=vocab,
              logprob_chunk_tokens=recipe.memory.logprob_chunk_tokens)
    # The one place a step's batch moves to the model's device: the rollout's token
    # ids are host lists; every later tensor of the step is made where these live.
    device = next(models.policy[0].parameters()).device
    pad_multiple = sequence_pad_multiple(recipe.parallel, recipe.precision)
    sequences = response_sequences(local, pad_id, seq_len, pad_multiple).to(device)
    policy_out = None
    if policy:
        with timed(times, "forward/policy"):
            policy_out = forward_logprobs(models.policy, sequences, groups, **kw)
    proxy = answers = None
    with resident(models.reference, device):  # memory.offload_reference: swapped in here
        with timed(times, "forward/reference"):
            reference = forward_logprobs(models.reference, sequences, groups, **kw)
        if NEEDS_PROXY in reward_needs(recipe.rewards.components):
            with timed(times, "forward/proxy"):
                answers = answer_sequences(local, models.tokenizer, pad_id, seq_len,
                                           recipe.rewards.ppl.answer_pattern,
                                           pad_multiple=pad_multiple).to(device)
                proxy_model = (models.policy if recipe.rewards.ppl.proxy == "policy"
                               else models.reference)
                proxy = forward_logprobs(proxy_model, answers.sequences, groups, **kw)
    return Forwards(sequences, policy_out, reference, proxy, answers)


def reward_step(recipe: Recipe, local: RolloutBatch, fwd: Forwards, scorer,
                vocab_size: int, times: dict[str, float] | None = None) -> torch.Tensor:
    """The K reward components of each response: -> r [B, K] (last stage only);
    times: each component's seconds as timing/reward/<name>."""
    batch = RewardBatch(
        prompts=local.per_response(local.prompts), responses=local.response_texts,
        references=local.per_response(local.references),
        response_lengths=torch.tensor([len(r) for r in local.response_ids],
                                      device=fwd.sequences.tokens.device),
        vocab_size=vocab_size, entropy=None if fwd.policy is None else fwd.policy.entropy,
        response_mask=fwd.sequences.response_mask,
        proxy_answer_logprobs=None if fwd.proxy is None else fwd.proxy.logprobs,
        proxy_answer_mask=None if fwd.answers is None else fwd.answers.sequences.response_mask,
        proxy_answer_skipped=None if fwd.answers is None else fwd.answers.skipped,
        reasoning_tokens=None if fwd.answers is None else fwd.answers.reasoning_tokens,
        proxy_response_logprobs=fwd.reference.logprobs, pref_scorer=scorer,
        policy_logprobs=None if fwd.policy is None else fwd.policy.logprobs,
        group_size=local.group_size)
    return compute_rewards(batch, recipe.rewards.components, recipe.rewards, times=times)


MetricView = tuple[dict[str, float], dict[str, tuple[list[float], int, float]], int]
"""(metric sums, {task: (weight sums [K], count, w.r sum)}, number of responses)."""


def metric_view(names, local: RolloutBatch, sc: Scalarized,
                trainer_logprobs: torch.Tensor | None = None,
                answers: AnswerView | None = None) -> MetricView:
    """This rank's metric SUMS (merged over DP ranks by `merge_metric_views`).

    trainer_logprobs [B, S]: when given (temperature 1, top-p 1), the largest
    |engine sampler logprob - trainer logprob| of any response token is recorded as
    rollout/logprob_gap_max, a per-step check of the refit. answers: r_ppl's view,
    for the fractions of rows whose reasoning was trimmed to fit the whole reference
    (reward/ppl_reference_trimmed) or that could not be scored (reward/ppl_skipped).
    """
    lengths = torch.tensor([float(len(r)) for r in local.response_ids])
    sums = {f"reward/{n}": sc.rewards[:, i].sum().item() for i, n in enumerate(names)}
    sums.update({"reward/scalar": sc.weighted_raw.sum().item(),
                 "reward/mean_raw": sc.rewards.mean(dim=1).sum().item(),
                 "reward/scalar_normalized": sc.scores.sum().item(),
                 "reward/advantage_abs": sc.advantages.abs().sum().item(),
                 "kl/seq": sc.kl_seq.sum().item(), "response/length": lengths.sum().item(),
                 "response/truncated": float(sum(local.truncated))})
    if sc.skipped is not None:
        sums["reward/nonfinite_skipped"] = float(sc.skipped.sum())
    if answers is not None:  # the view's [B] flags, on the model's device: one read
        trimmed, skipped = torch.stack([answers.trimmed.sum(), answers.skipped.sum()]).tolist()
        sums["reward/ppl_reference_trimmed"] = float(trimmed)
        sums["reward/ppl_skipped"] = float(skipped)
    if trainer_logprobs is not None:
        gap = engine_trainer_gap(local, trainer_logprobs)
        sums["rollout/logprob_gap_max"] = gap.max().item() if gap.numel() else 0.0
    tasks = local.per_response(local.tasks)
    per_task: dict[str, list] = {}
    for i, task in enumerate(tasks):
        entry = per_task.setdefault(task, [torch.zeros(sc.report_weights.shape[1]), 0, 0.0])
        entry[0] += sc.report_weights[i]
        entry[1] += 1
        entry[2] += sc.weighted_raw[i].item()
    sums.update(sc.metric_sums)
    return sums, {t: (v[0].tolist(), v[1], v[2]) for t, v in per_task.items()}, len(tasks)


def merge_metric_views(names, parts: list[MetricView]
                       ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Global means over the batch and per-task mean report weights.

    reward/scalar is w . r on the raw components with the weights used (R itself is
    built from group-normalised components, so its mean is ~ -beta KL by construction:
    reported as reward/scalar_normalized); reward/mean_raw is the unweighted mean.
    rollout/logprob_gap_max is a max over ranks, every other key a mean.
    Returns ({"reward/<name>", "reward/scalar", "kl/seq", "response/length",
    "conductor/weight/<task>/<name>", ...}, {task: mean weights [K]}).
    """
    count = sum(p[2] for p in parts)
    keys = parts[0][0]
    metrics = {key: sum(p[0][key] for p in parts) / count for key in keys
               if key != "rollout/logprob_gap_max"}
    if "rollout/logprob_gap_max" in keys:
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


def step_metrics(recipe: Recipe, local: RolloutBatch, sc: Scalarized, fwd: Forwards,
                 groups: ParallelGroups) -> tuple[dict[str, float], dict[str, list[float]]]:
    """`metric_view` of this rank, gathered over data-parallel ranks and merged."""
    names = recipe.rewards.components
    exact = recipe.rollout.temperature == 1.0 and recipe.rollout.top_p == 1.0
    parts = [metric_view(names, local, sc, fwd.policy.logprobs if exact else None,
                         fwd.answers)]
    if groups.dp_size > 1:
        local_view, parts = parts[0], [None] * groups.dp_size
        dist.all_gather_object(parts, local_view, group=groups.dp)
    return merge_metric_views(names, parts)


def rollout_records(recipe: Recipe, local: RolloutBatch, sc: Scalarized,
                    groups: ParallelGroups, first_prompt: int) -> list[dict] | None:
    """Every response of the step as plain records, gathered over data-parallel ranks
    (run.log_rollouts; the logging rank writes them to rollouts.jsonl). first_prompt:
    the global index of this rank's first prompt, so `prompt_index` and `group` name the
    same prompt whatever the DP split. Returns the records on DP rank 0, else None."""
    names, g = recipe.rewards.components, local.group_size
    actions = sc.used.actions
    rows = []
    for i in range(local.num_responses):
        p = i // g
        rows.append({
            "prompt_index": first_prompt + p, "sample": i % g, "task": local.tasks[p],
            "prompt": local.prompts[p], "reference": local.references[p],
            "response": local.response_texts[i], "truncated": bool(local.truncated[i]),
            "num_tokens": len(local.response_ids[i]),
            "rewards": {n: float(sc.rewards[i, k]) for k, n in enumerate(names)},
            "weights": [float(w) for w in sc.weights[i]],
            "action": None if actions is None else int(actions[i]),
            "advantage": float(sc.advantages[i]), "kl_seq": float(sc.kl_seq[i])})
    if groups.dp_size == 1:
        return rows
    parts = [None] * groups.dp_size
    dist.all_gather_object(parts, rows, group=groups.dp)
    return [r for part in parts for r in part] if groups.dp_rank == 0 else None
