"""Conversion units: one megatron tensor <-> one or more Hugging Face tensors.

A :class:`Unit` names both sides (HF names; megatron parameter names in the local and
the Transformer Engine layer spec; the ``dist_checkpointing`` key) and says how the
tensors are combined (``kind``) and how the megatron tensor is split over TP ranks
(``tp_split``, see :mod:`maestro_megatron.weights.layout`). The functions here are pure:
they act on full tensors, or on a ``read(name, dim, start, stop)`` callable that returns
a slice of one HF tensor (so a TP rank reads only its rows/columns from disk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights import layout

KINDS = ("copy", "qkv", "fc1", "vocab")

ReadSlice = Callable[[str, int | None, int, int], torch.Tensor]
"""read(hf_name, dim, start, stop) -> the slice [start, stop) of dim (dim None: whole)."""


@dataclass(frozen=True)
class Unit:
    """One megatron tensor and the HF tensors it is made of."""

    kind: str
    """copy (1:1) | qkv (q, k, v -> linear_qkv) | fc1 (gate, up -> linear_fc1) | vocab
    (1:1 with vocabulary padding on dim 0)."""
    tp_split: str
    """replicated | column | row | fc1: how the megatron tensor is split over TP."""
    hf_names: tuple[str, ...]
    """HF tensor names, in the order the kind combines them."""
    local_suffix: str
    """Megatron parameter name in the local spec (after ``decoder.layers.{i}.`` for layers)."""
    te_suffix: str
    """Megatron parameter name in the Transformer Engine spec (same convention)."""
    layer: int | None = None
    """Global layer index, or None for embedding / final norm / output layer."""

    def param_name(self, spec: str = "local", local_layer: int | None = None) -> str:
        """``model.named_parameters()`` name; ``local_layer``: index within a PP stage."""
        suffix = self.te_suffix if spec == "transformer_engine" else self.local_suffix
        if self.layer is None:
            return suffix
        index = self.layer if local_layer is None else local_layer
        return f"decoder.layers.{index}.{suffix}"

    @property
    def ckpt_key(self) -> str:
        """``dist_checkpointing`` key: TE names, layers stacked on a leading axis."""
        return self.te_suffix if self.layer is None else f"decoder.layers.{self.te_suffix}"


@dataclass(frozen=True)
class Dims:
    """Sizes a :class:`ModelConfig` implies."""

    num_heads: int
    num_groups: int
    head_dim: int
    hidden: int
    ffn: int
    vocab: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> Dims:
        head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
        return cls(cfg.num_attention_heads, cfg.num_query_groups, head_dim, cfg.hidden_size,
                   cfg.ffn_hidden_size, cfg.vocab_size)


def hf_shapes(unit: Unit, cfg: ModelConfig) -> list[tuple[int, ...]]:
    """Expected shape of each of ``unit.hf_names`` under ``cfg``."""
    dims = Dims.of(cfg)
    if unit.kind == "qkv":
        rest = (dims.hidden,) if unit.hf_names[0].endswith("weight") else ()
        return [(dims.num_heads * dims.head_dim, *rest),
                (dims.num_groups * dims.head_dim, *rest),
                (dims.num_groups * dims.head_dim, *rest)]
    if unit.kind == "fc1":
        return [(dims.ffn, dims.hidden)] * 2
    if unit.kind == "vocab":
        return [(dims.vocab, dims.hidden)]
    return [_copy_shape(unit, dims)]


def _copy_shape(unit: Unit, dims: Dims) -> tuple[int, ...]:
    suffix = unit.local_suffix
    if suffix.endswith(("q_layernorm.weight", "k_layernorm.weight")):
        return (dims.head_dim,)
    if suffix.endswith("linear_proj.weight"):
        return (dims.hidden, dims.num_heads * dims.head_dim)
    if suffix.endswith("linear_fc2.weight"):
        return (dims.hidden, dims.ffn)
    return (dims.hidden,)  # RMSNorm weights


def to_megatron(unit: Unit, hf: list[torch.Tensor], cfg: ModelConfig,
                padded_vocab: int) -> torch.Tensor:
    """HF tensors (order of ``unit.hf_names``) -> the full (TP=1) megatron tensor."""
    if unit.kind == "qkv":
        return layout.merge_qkv(*hf, num_query_groups=cfg.num_query_groups)
    if unit.kind == "fc1":
        return layout.merge_fc1(*hf)
    if unit.kind == "vocab":
        return layout.pad_vocab(hf[0], padded_vocab)
    return hf[0]


def to_hf(unit: Unit, full: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """The full (TP=1) megatron tensor -> HF tensors (order of ``unit.hf_names``)."""
    if unit.kind == "qkv":
        return list(layout.split_qkv(full, cfg.num_attention_heads, cfg.num_query_groups))
    if unit.kind == "fc1":
        return list(layout.split_fc1(full))
    if unit.kind == "vocab":
        return [layout.unpad_vocab(full, cfg.vocab_size)]
    return [full]


def read_megatron_shard(unit: Unit, read: ReadSlice, cfg: ModelConfig, padded_vocab: int,
                        tp_rank: int, tp_size: int,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """This TP rank's megatron shard, reading only the HF rows/columns it needs.

    Equal to ``layout.tp_shard(unit.tp_split, to_megatron(...), tp_rank, tp_size)``
    because QKV is merged per query group and fc1 per half.

    Args:
        out: a contiguous tensor of the shard's shape (e.g. the parameter) that the
            shard is written into, in its dtype, and returned; a shape that differs is a
            ValueError. None: a new tensor in the HF dtype.
    """
    def rows(name: str, total: int) -> torch.Tensor:
        step = total // tp_size
        return read(name, 0, tp_rank * step, (tp_rank + 1) * step)

    dims = Dims.of(cfg)
    if unit.kind == "qkv":
        q, k, v = unit.hf_names
        kv_rows = dims.num_groups * dims.head_dim
        return layout.merge_qkv(rows(q, dims.num_heads * dims.head_dim), rows(k, kv_rows),
                                rows(v, kv_rows), cfg.num_query_groups // tp_size, out=out)
    if unit.kind == "fc1":
        return layout.merge_fc1(rows(unit.hf_names[0], dims.ffn),
                                rows(unit.hf_names[1], dims.ffn), out=out)
    if unit.kind == "vocab":
        return _vocab_shard(unit, read, dims, padded_vocab // tp_size, tp_rank, out)
    if unit.tp_split == "row":
        width = _copy_shape(unit, dims)[1] // tp_size
        return _into(out, read(unit.hf_names[0], 1, tp_rank * width, (tp_rank + 1) * width))
    return _into(out, read(unit.hf_names[0], None, 0, 0))


def read_fc1_half(unit: Unit, read: ReadSlice, cfg: ModelConfig, tp_rank: int, tp_size: int,
                  half: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Half ``half`` (0: gate, 1: up) of this TP rank's ``linear_fc1`` shard
    [gate_r; up_r]: the rank's rows of that one HF tensor."""
    if unit.kind != "fc1" or half not in (0, 1):
        raise ValueError(f"no fc1 half {half} of a {unit.kind} unit")
    step = Dims.of(cfg).ffn // tp_size
    return _into(out, read(unit.hf_names[half], 0, tp_rank * step, (tp_rank + 1) * step))


def _vocab_shard(unit: Unit, read: ReadSlice, dims: Dims, step: int, tp_rank: int,
                 out: torch.Tensor | None) -> torch.Tensor:
    """Rows [tp_rank * step, (tp_rank + 1) * step) of the padded vocabulary tensor."""
    start, stop = tp_rank * step, min((tp_rank + 1) * step, dims.vocab)
    if start < stop:
        return layout.pad_vocab(read(unit.hf_names[0], 0, start, stop), step, out=out)
    if out is not None:  # a rank made only of padding rows
        return layout.fits(out, (step, dims.hidden)).zero_()
    return torch.zeros((step, dims.hidden), dtype=read(unit.hf_names[0], 0, 0, 1).dtype)


def _into(out: torch.Tensor | None, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or copied into ``out`` (same shape) when given."""
    if out is None:
        return tensor
    return layout.fits(out, tensor.shape).copy_(tensor)
