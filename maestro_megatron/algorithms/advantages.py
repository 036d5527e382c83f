"""Group-relative advantages (GRPO; MAESTRO arXiv 2601.07208, section 3)."""

from __future__ import annotations

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
