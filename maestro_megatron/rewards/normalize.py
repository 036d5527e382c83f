"""Per-component normalisation of the reward vectors before weighting."""

from __future__ import annotations

import torch


def _zscore(x: torch.Tensor, dim) -> torch.Tensor:
    centered = x - x.mean(dim=dim, keepdim=True)
    count = 1
    for d in (dim if isinstance(dim, tuple) else (dim,)):
        count *= x.shape[d]
    if count < 2:
        return torch.zeros_like(x)
    std = x.std(dim=dim, keepdim=True)
    return torch.where(std > 0, centered / torch.where(std > 0, std, 1.0), 0.0)


def normalize_components(rewards: torch.Tensor, mode: str = "group") -> torch.Tensor:
    """rewards: [N, G, K] -> [N, G, K].

    group: z-score each component within each group (Bessel std; std 0 -> 0);
    batch: z-score each component over all N*G responses; none: unchanged.
    """
    if rewards.dim() != 3:
        raise ValueError(f"rewards must be [N, G, K], got {tuple(rewards.shape)}")
    if mode == "group":
        return _zscore(rewards, 1)
    if mode == "batch":
        return _zscore(rewards, (0, 1))
    if mode == "none":
        return rewards
    raise ValueError(f"normalization {mode!r} is not group, batch or none")
