"""The scalar reward of a weighted reward vector (DESIGN.md section 3).

R[i, j] = w[i, j] . r~[i, j, :] - beta * KL_seq[i, j]
The weights come from a scalarizer (`maestro_megatron.scalarizers`).
"""

from __future__ import annotations

import torch


def scalar_reward(weights: torch.Tensor, rewards: torch.Tensor,
                  kl_seq: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """R = w . r~ - beta * KL_seq; weights, rewards: [B, K], kl_seq: [B] -> [B]."""
    scalar = (weights.to(rewards.dtype) * rewards).sum(dim=-1)
    if kl_seq is not None and kl_coef:
        scalar = scalar - kl_coef * kl_seq.to(scalar.dtype)
    return scalar
