"""Advantage estimators (GRPO; MAESTRO arXiv 2601.07208, section 3; GDPO arXiv
2601.05242). `ADVANTAGE_ESTIMATORS` maps `grpo.advantage_estimator` to a function
(scores [N, G], *, eps, normalize_std, reduce_sum) -> [N, G]."""

from __future__ import annotations

from collections.abc import Callable

import torch


def group_advantages(scores: torch.Tensor, *, eps: float = 1e-6,
                     normalize_std: bool = True) -> torch.Tensor:
    """A[i, j] = (R[i, j] - mean_j R[i, :]) / (std_j R[i, :] + eps).

    scores: [N, G] scalar rewards of G responses to each of N prompts -> [N, G].
    The std is the unbiased (Bessel) std of each group. A group whose std is 0 (a
    constant group, or a group of one) gets advantage 0 rather than NaN.
    normalize_std=False gives the Dr.GRPO advantage R - mean.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, G], got shape {tuple(scores.shape)}")
    centered = scores - scores.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centered
    if scores.shape[1] < 2:
        return torch.zeros_like(scores)
    std = scores.std(dim=1, keepdim=True)
    constant = std <= 0
    return torch.where(constant, torch.zeros_like(centered), centered / (std + eps))


def batch_whitened(scores: torch.Tensor, *, eps: float = 1e-6,
                   reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """A = (R - mean(R)) / std(R) over the GLOBAL batch (Bessel std; std 0: centred only).

    GDPO's last step (NeMo-RL GDPOAdvantageEstimator; TRL normalize_then_sum adds
    1e-4 to the std instead): R is already the weighted sum of per-component
    group-normalised rewards. reduce_sum sums over data-parallel ranks. [N, G] -> [N, G].
    """
    reduce_sum = reduce_sum or (lambda t: t)
    flat = scores.double().flatten()
    totals = reduce_sum(torch.stack([flat.sum(), torch.tensor(float(flat.numel()),
                                                              dtype=torch.float64)]))
    mean = totals[0] / totals[1]
    squares = reduce_sum((flat - mean).pow(2).sum().reshape(1))[0]
    std = (squares / (totals[1] - 1)).sqrt() if totals[1] > 1 else torch.zeros(())
    centered = scores.double() - mean
    out = centered / (std + eps) if std > 0 else centered
    return out.to(scores.dtype)


def rloo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """A[i, j] = R[i, j] - mean of the OTHER G - 1 rewards of group i (leave-one-out
    baseline; EM-RL's estimator) = G / (G - 1) x (R[i, j] - mean_j R[i, :]).
    scores: [N, G] -> [N, G]; a group of one gets 0."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, G], got shape {tuple(scores.shape)}")
    g = scores.shape[1]
    if g < 2:
        return torch.zeros_like(scores)
    return (scores - scores.mean(dim=1, keepdim=True)) * (g / (g - 1))


def _rloo(scores, *, eps, normalize_std, reduce_sum=None):
    return rloo_advantages(scores)


def _grpo(scores, *, eps, normalize_std, reduce_sum=None):
    return group_advantages(scores, eps=eps, normalize_std=normalize_std)


def _gdpo(scores, *, eps, normalize_std, reduce_sum=None):
    return batch_whitened(scores, eps=eps, reduce_sum=reduce_sum)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {"grpo": _grpo, "gdpo": _gdpo,
                                                                "rloo": _rloo}
