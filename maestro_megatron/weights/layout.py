"""Pure tensor layouts between Hugging Face and megatron-core (no I/O, no distributed).

All functions take and return plain tensors. "Full" means the TP=1 megatron tensor.

Megatron's fused QKV (``linear_qkv``) is interleaved per query group ``g``: the rows are
``[q heads of g | k head of g | v head of g]`` for ``g = 0 .. G-1``, so a tensor-parallel
rank owns a contiguous block of whole groups. SwiGLU ``linear_fc1`` is ``[gate; up]`` at
TP=1, and ``[gate_r; up_r]`` on TP rank ``r`` (not a contiguous slice of ``[gate; up]``).
"""

from __future__ import annotations

import torch

TP_SPLITS = ("replicated", "column", "row", "fc1")
"""How a full megatron tensor is split over TP ranks (see :func:`tp_shard`)."""


def fits(out: torch.Tensor, shape) -> torch.Tensor:
    """``out``, if its shape is ``shape`` (ValueError naming both otherwise)."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"shard shape {list(shape)} does not fit {list(out.shape)}")
    return out


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              num_query_groups: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """HF q/k/v projections -> megatron ``linear_qkv`` rows, interleaved per query group.

    Args:
        q: [num_heads * d, *rest] (weight: rest = [hidden]; bias: rest = []).
        k, v: [num_query_groups * d, *rest].
        num_query_groups: G, the number of key/value heads in these tensors.
        out: a contiguous tensor of the result's shape to write into (in its dtype)
            instead of a new one.

    Returns:
        [(num_heads + 2 G) * d, *rest]: for each group its query heads, its key head,
        its value head.
    """
    rest = q.shape[1:]
    groups = [t.reshape(num_query_groups, -1, *rest) for t in (q, k, v)]
    if out is None:
        return torch.cat(groups, dim=1).reshape(-1, *rest)
    rows = q.shape[0] + k.shape[0] + v.shape[0]
    torch.cat(groups, dim=1, out=fits(out, (rows, *rest)).view(num_query_groups, -1, *rest))
    return out


def split_qkv(qkv: torch.Tensor, num_heads: int,
              num_query_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_qkv`: [(num_heads + 2 G) * d, *rest] -> q, k, v.

    Returns q [num_heads * d, *rest], k and v [G * d, *rest] (contiguous copies).
    """
    rest = qkv.shape[1:]
    heads_per_group = num_heads // num_query_groups
    rows_per_group = qkv.shape[0] // num_query_groups
    d = rows_per_group // (heads_per_group + 2)
    grouped = qkv.reshape(num_query_groups, rows_per_group, *rest)
    q, k, v = torch.split(grouped, [heads_per_group * d, d, d], dim=1)
    return (q.reshape(-1, *rest).contiguous(), k.reshape(-1, *rest).contiguous(),
            v.reshape(-1, *rest).contiguous())


def merge_fc1(gate: torch.Tensor, up: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """gate [F, H], up [F, H] -> ``linear_fc1`` [2F, H] = [gate; up] (into ``out``, in
    its dtype, when given)."""
    if out is None:
        return torch.cat([gate, up], dim=0)
    return torch.cat([gate, up], dim=0,
                     out=fits(out, (gate.shape[0] + up.shape[0], *gate.shape[1:])))


def split_fc1(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear_fc1`` [2F, H] -> (gate [F, H], up [F, H]) (contiguous copies)."""
    gate, up = torch.chunk(fc1, 2, dim=0)
    return gate.contiguous(), up.contiguous()


def pad_vocab(weight: torch.Tensor, padded_size: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """[V, H] -> [padded_size, H] with zero rows appended (embedding / output layer);
    into ``out`` (in its dtype) when given."""
    rows = weight.shape[0]
    if padded_size < rows:
        raise ValueError(f"padded vocab {padded_size} < vocab {rows}")
    if out is None and padded_size == rows:
        return weight
    if out is None:
        out = weight.new_empty((padded_size, *weight.shape[1:]))
    fits(out, (padded_size, *weight.shape[1:]))
    out[:rows] = weight
    out[rows:] = 0
    return out


def unpad_vocab(weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[Vp, H] -> [V, H]: drop the padding rows (contiguous copy when rows are dropped)."""
    if weight.shape[0] == vocab_size:
        return weight
    return weight[:vocab_size].contiguous()


def tp_shard(split: str, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s shard of a full (TP=1) megatron tensor.

    ``split``: ``replicated`` (norms) -> full; ``column`` (linear_qkv weight/bias,
    embedding, output layer; padded vocab) -> dim-0 chunk; ``row`` (linear_proj,
    linear_fc2) -> dim-1 chunk; ``fc1`` -> ``[gate_r; up_r]``, each half split on dim 0.
    """
    if split == "replicated" or size == 1:
        return full
    if split == "column":
        return _chunk(full, 0, rank, size)
    if split == "row":
        return _chunk(full, 1, rank, size)
    if split == "fc1":
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([_chunk(gate, 0, rank, size), _chunk(up, 0, rank, size)], dim=0)
    raise ValueError(f"unknown TP split {split!r}; expected one of {TP_SPLITS}")


def tp_gather(split: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`tp_shard`: the shards of ranks 0..size-1 -> full tensor."""
    if split == "replicated" or len(shards) == 1:
        return shards[0]
    if split == "column":
        return torch.cat(shards, dim=0)
    if split == "row":
        return torch.cat(shards, dim=1)
    if split == "fc1":
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    raise ValueError(f"unknown TP split {split!r}; expected one of {TP_SPLITS}")


def _chunk(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    if t.shape[dim] % size:
        raise ValueError(f"dim {dim} of shape {list(t.shape)} is not divisible by TP={size}")
    return torch.chunk(t, size, dim=dim)[rank].contiguous()
