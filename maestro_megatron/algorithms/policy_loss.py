"""Clipped GRPO surrogate with clip-higher, dual clip and global-count aggregation.

Per token: l_t = max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high)),
rho_t = exp(logp_t - logp_old_t); with dual clip c and A < 0: l_t = min(l_t, -c A).
(GRPO: Shao et al. 2024; clip-higher: DAPO; dual clip: Ye et al. 2020.)

The aggregation divides by GLOBAL counts (summed over micro-batches and data-parallel
ranks) when they are given, so the sum of the per-shard losses is the whole-batch loss
and splitting a batch never changes the gradient (DESIGN.md section 3).
"""

from __future__ import annotations

import torch


def _token_mean(per_token, mask, num_global_tokens, num_global_seqs, max_len):
    denom = mask.sum() if num_global_tokens is None else num_global_tokens
    return (per_token * mask).sum() / max(float(denom), 1.0)


def _seq_counts(mask, num_global_seqs):
    if num_global_seqs is not None:
        return max(float(num_global_seqs), 1.0)
    return max(float((mask.sum(dim=1) > 0).sum()), 1.0)  # empty sequences do not count


def _seq_mean_token_mean(per_token, mask, num_global_tokens, num_global_seqs, max_len):
    seq_tokens = mask.sum(dim=1)
    seq_loss = (per_token * mask).sum(dim=1) / seq_tokens.clamp(min=1.0)
    return seq_loss.sum() / _seq_counts(mask, num_global_seqs)


def _seq_mean_token_sum_norm(per_token, mask, num_global_tokens, num_global_seqs, max_len):
    norm = float(mask.shape[1] if max_len is None else max_len)
    seq_loss = (per_token * mask).sum(dim=1) / norm
    return seq_loss.sum() / _seq_counts(mask, num_global_seqs)


LOSS_AGGREGATIONS = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, *, eps_low: float = 0.2, eps_high: float = 0.2,
                dual_clip: float | None = None, agg: str = "token-mean",
                num_global_tokens: float | None = None, num_global_seqs: float | None = None,
                max_len: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO policy loss and metrics.

    logprobs, old_logprobs, mask: [B, T]; advantages: [B] (one per sequence).
    agg: token-mean | seq-mean-token-mean | seq-mean-token-sum-norm.
    num_global_tokens / num_global_seqs: the batch-wide counts to divide by (default:
    this shard's own counts; sequences with no unmasked token are not counted).
    max_len: the constant of seq-mean-token-sum-norm (default T).
    Returns (loss scalar, {"clip_frac", "ratio_mean", "dual_clip_frac"}) where the
    metrics are local masked means, detached.
    """
    if agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss agg {agg!r} is not one of {sorted(LOSS_AGGREGATIONS)}")
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    dual = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual = (adv < 0) & (per_token > cap)
        per_token = torch.where(dual, cap, per_token)
    loss = LOSS_AGGREGATIONS[agg](per_token, mask, num_global_tokens, num_global_seqs, max_len)
    with torch.no_grad():
        num_tokens = mask.sum().clamp(min=1.0)
        metrics = {
            "clip_frac": ((clipped > unclipped).to(mask.dtype) * mask).sum() / num_tokens,
            "ratio_mean": (ratio * mask).sum() / num_tokens,
            "dual_clip_frac": (dual.to(mask.dtype) * mask).sum() / num_tokens,
        }
    return loss, metrics
