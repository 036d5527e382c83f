"""Per-token KL estimators between the policy and the reference (Schulman's k1/k2/k3)."""

from __future__ import annotations

import torch


def _k1(delta: torch.Tensor) -> torch.Tensor:
    return delta


def _k2(delta: torch.Tensor) -> torch.Tensor:
    return 0.5 * delta.square()


def _k3(delta: torch.Tensor) -> torch.Tensor:
    # exp(ref - logp) - (ref - logp) - 1, with ref - logp = -delta; >= 0 and unbiased.
    return torch.expm1(-delta) + delta


KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate; logprobs, ref_logprobs: [B, T] -> [B, T].

    k1 = logp - ref; k2 = 0.5 (logp - ref)^2; k3 = exp(ref - logp) - (ref - logp) - 1.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kl kind {kind!r} is not one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logprobs - ref_logprobs)


def masked_seq_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked tokens of each row; values, mask: [B, T] -> [B] (0 if empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
