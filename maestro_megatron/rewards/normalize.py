"""Per-component normalisation of the reward vectors before weighting."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _zscore(x: torch.Tensor, dim, eps: float = 0.0) -> torch.Tensor:
    centered = x - x.mean(dim=dim, keepdim=True)
    count = 1
    for d in (dim if isinstance(dim, tuple) else (dim,)):
        count *= x.shape[d]
    if count < 2:
        return torch.zeros_like(x)
    std = x.std(dim=dim, keepdim=True)
    if eps > 0:
        return centered / (std + eps)
    return torch.where(std > 0, centered / torch.where(std > 0, std, 1.0), 0.0)


def _batch_zscore(x: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor],
                  eps: float = 0.0) -> torch.Tensor:
    """z-score each component over the GLOBAL batch; x: [N, G, K] is this rank's share,
    reduce_sum sums a tensor over the data-parallel ranks (two passes: mean, then the
    Bessel variance around it)."""
    flat = x.reshape(-1, x.shape[-1]).double()
    totals = reduce_sum(torch.cat([flat.sum(0), torch.tensor([float(flat.shape[0])],
                                                             dtype=torch.float64)]))
    count, mean = totals[-1], totals[:-1] / totals[-1]
    squares = reduce_sum(((flat - mean) ** 2).sum(0))
    if count < 2:
        return torch.zeros_like(x)
    std = (squares / (count - 1)).sqrt()
    if eps > 0:
        return ((flat - mean) / (std + eps)).to(x.dtype).view_as(x)
    z = torch.where(std > 0, (flat - mean) / torch.where(std > 0, std, 1.0), 0.0)
    return z.to(x.dtype).view_as(x)


def normalize_components(rewards: torch.Tensor, mode: str = "group",
                         reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         std_eps: float = 0.0) -> torch.Tensor:
    """rewards: [N, G, K] -> [N, G, K].

    std_eps 0: divide by the std, a component with std 0 -> 0; std_eps > 0: divide by
    std + std_eps (GDPO's 1e-4), so a near-constant component stays near 0 instead of
    being blown up to unit scale.

    group: z-score each component within each group (Bessel std; std 0 -> 0);
    batch: z-score each component over all N*G responses of the global batch: with
    `reduce_sum` (sum over data-parallel ranks) the moments are the global ones, so the
    result does not depend on the split; none: unchanged.
    """
    if rewards.dim() != 3:
        raise ValueError(f"rewards must be [N, G, K], got {tuple(rewards.shape)}")
    if mode == "group":
        return _zscore(rewards, 1, std_eps)
    if mode == "batch":
        if reduce_sum is not None:
            return _batch_zscore(rewards, reduce_sum, std_eps)
        return _zscore(rewards, (0, 1), std_eps)
    if mode == "none":
        return rewards
    raise ValueError(f"normalization {mode!r} is not group, batch or none")
