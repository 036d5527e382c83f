"""The scalarize -> KL -> R -> advantage chain of one step, in one place (torch only).

normalise components -> scalarizer weights w -> R = w . r~ - beta KL_seq ->
A = group-normalised R (DESIGN.md section 3). The trainer, `tools/megatron_step.py` and
the layout-equivalence workers all call `scalarize_step`; it runs where rewards, logprobs
and h meet (the last pipeline stage), on one data-parallel rank's whole groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from maestro_megatron.algorithms import ADVANTAGE_ESTIMATORS, kl_estimate, masked_seq_mean
from maestro_megatron.rewards import normalize_components, scalar_reward
from maestro_megatron.scalarizers.base import Scalarization, Scalarizer, ScalarizerContext


@dataclass
class Scalarized:
    """Per-response results of scalarization (this DP rank's B rows)."""

    context: ScalarizerContext
    """What the scalarizer saw (h, raw and normalised components, uniforms, tasks)."""
    used: Scalarization
    """Weights [B, K] used and actions [B] (or None)."""
    kl_seq: torch.Tensor
    """[B] sequence KL(policy || reference): k-estimator mean over response tokens."""
    scores: torch.Tensor
    """[B] scalar reward R = w . r~ - beta KL (normalised components: mean ~ 0 per group)."""
    weighted_raw: torch.Tensor
    """[B] w . r with the RAW components (a progress measure; not used for training)."""
    advantages: torch.Tensor
    """[B] group-normalised advantages."""
    report_weights: torch.Tensor
    """[B, K] weights reported per task (the Conductor's deterministic w(h))."""
    metric_sums: dict[str, float]
    """The scalarizer's own per-response metrics, summed over the B rows."""
    skipped: torch.Tensor | None = None
    """[B] bool: a component was NaN/inf (rewards.on_nonfinite: skip): advantage 0."""

    @property
    def rewards(self) -> torch.Tensor:
        """[B, K] raw reward components."""
        return self.context.rewards

    @property
    def weights(self) -> torch.Tensor:
        return self.used.weights

    @property
    def actions(self) -> torch.Tensor | None:
        return self.used.actions


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                response_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, S] policy and reference log-probs -> [B] per-sequence mean KL estimate (CPU)."""
    return masked_seq_mean(kl_estimate(logprobs, ref_logprobs, kind), response_mask).cpu()


def scalarize_step(scalarizer: Scalarizer, rewards: torch.Tensor, *,
                   logprobs: torch.Tensor | None,
                   ref_logprobs: torch.Tensor, response_mask: torch.Tensor,
                   h: torch.Tensor | None, step: int, uniforms: torch.Tensor, grpo,
                   normalization: str = "group", std_eps: float = 0.0,
                   tasks: tuple[str, ...] = (),
                   task_ids: torch.Tensor | None = None,
                   reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> Scalarized:
    """rewards: [B, K] raw; logprobs / ref_logprobs / response_mask: [B, S]; h: [B, d];
    uniforms: [B] (this rank's slice of the global stream); grpo: GRPOConfig
    (group_size, kl_kind, kl_coef, kl_in_loss, adv_eps, normalize_std).

    B must hold whole groups. KL goes into R unless grpo.kl_in_loss (then beta = 0 here).
    logprobs None (no policy forward before the update; kl_in_loss only): kl_seq is
    zeros until the caller sets it from the update's own pass (`sequence_kl`).
    reduce_sum (sum over data-parallel ranks) makes batch-level statistics global.
    """
    g, k = grpo.group_size, rewards.shape[1]
    if rewards.shape[0] % g:
        raise ValueError(f"{rewards.shape[0]} responses are not whole groups of {g}")
    finite = torch.isfinite(rewards)
    skipped = ~finite.all(dim=1)
    if bool(skipped.any()):  # stand-in: the group's finite mean (a z-score of 0)
        grouped, ok = rewards.view(-1, g, k), finite.view(-1, g, k)
        means = torch.where(ok, grouped, 0.0).sum(1, keepdim=True) / ok.sum(1, keepdim=True)
        filled = torch.where(ok, grouped, torch.nan_to_num(means, nan=0.0).expand_as(grouped))
        rewards = filled.view(-1, k)
    normalised = normalize_components(rewards.view(-1, g, k), normalization,
                                      reduce_sum, std_eps).view(-1, k)
    ctx = ScalarizerContext(step=step, rewards=rewards, normalized=normalised,
                            uniforms=uniforms, group_size=g, tasks=tuple(tasks),
                            task_ids=task_ids, h=h)
    used = scalarizer(ctx)
    if logprobs is None and not grpo.kl_in_loss:
        raise ValueError("a KL in the reward needs the policy's log-probs (logprobs=None)")
    kl_seq = (torch.zeros(rewards.shape[0]) if logprobs is None else
              sequence_kl(logprobs, ref_logprobs, response_mask, grpo.kl_kind))
    beta = 0.0 if grpo.kl_in_loss else grpo.kl_coef
    scores = scalar_reward(used.weights, normalised, kl_seq, beta)
    estimator = ADVANTAGE_ESTIMATORS[grpo.advantage_estimator]
    advantages = estimator(scores.view(-1, g), eps=grpo.adv_eps, normalize_std=grpo.normalize_std,
                           reduce_sum=reduce_sum).flatten()
    advantages = torch.where(skipped, torch.zeros_like(advantages), advantages)
    weighted_raw = (used.weights.to(rewards.dtype) * rewards).sum(dim=-1)
    return Scalarized(context=ctx, used=used, kl_seq=kl_seq, scores=scores,
                      weighted_raw=weighted_raw, advantages=advantages,
                      report_weights=scalarizer.report_weights(ctx, used),
                      metric_sums=scalarizer.metric_sums(ctx), skipped=skipped)
