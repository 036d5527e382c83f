"""RoPE frequency scaling the megatron model applies (torch only).

megatron-core 0.16's `RotaryEmbedding(rope_scaling=True)` hard-codes Llama 3.1's
low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 8192, so
`build_gpt_model` builds the unscaled embedding and sets its inverse frequencies from
`scaled_inv_freq`, which honours every field of the config.
"""

from __future__ import annotations

import math

import torch

from maestro_megatron.config.schema import RopeScalingConfig

ROPE_TYPES = ("llama3",)
"""Scaling types the trainer's model applies (others are refused by `scaled_inv_freq`)."""


def llama3_inv_freq(inv_freq: torch.Tensor, *, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_position_embeddings: int
                    ) -> torch.Tensor:
    """Llama 3.1 scaling of RoPE inverse frequencies: [D/2] -> [D/2] (same dtype, device).

    With w = 2 pi / f, L = original_max_position_embeddings, a = low_freq_factor,
    b = high_freq_factor: f if w < L / b (high frequencies kept); f / factor if w > L / a
    (low frequencies stretched); otherwise (1 - s) f / factor + s f with the smooth
    factor s = (L / w - a) / (b - a), which runs from 0 at w = L / a to 1 at w = L / b.
    """
    length = original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    smooth = (length / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > length / low_freq_factor, inv_freq / factor, blended)
    return torch.where(wavelen < length / high_freq_factor, inv_freq, out)


def scaled_inv_freq(inv_freq: torch.Tensor, scaling: RopeScalingConfig) -> torch.Tensor:
    """The inverse frequencies [D/2] under `scaling`; ValueError for an unknown type."""
    if scaling.rope_type != "llama3":
        raise ValueError(f"model.rope_scaling.rope_type={scaling.rope_type!r}: the trainer's "
                         f"model applies {', '.join(ROPE_TYPES)} only")
    return llama3_inv_freq(inv_freq, factor=scaling.factor,
                           low_freq_factor=scaling.low_freq_factor,
                           high_freq_factor=scaling.high_freq_factor,
                           original_max_position_embeddings=scaling
                           .original_max_position_embeddings)
