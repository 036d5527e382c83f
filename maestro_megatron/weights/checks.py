"""Input validation done before any process group or model exists (fast, clear errors)."""

from __future__ import annotations

from pathlib import Path

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.hf_io import HFCheckpoint
from maestro_megatron.weights.mapping import DecoderMapping
from maestro_megatron.weights.units import hf_shapes


def check_layout(cfg: ModelConfig, tp: int, pp: int) -> None:
    """TP divides heads and query groups, PP divides layers."""
    if tp < 1 or pp < 1:
        raise ConversionError(f"--tp {tp} / --pp {pp}: both must be >= 1")
    for what, value in (("num_attention_heads", cfg.num_attention_heads),
                        ("num_query_groups (num_key_value_heads)", cfg.num_query_groups)):
        if value % tp:
            raise ConversionError(f"--tp {tp} does not divide {what}={value}")
    if cfg.ffn_hidden_size % tp:
        raise ConversionError(f"--tp {tp} does not divide ffn_hidden_size={cfg.ffn_hidden_size}")
    if cfg.num_layers % pp:
        raise ConversionError(f"--pp {pp} does not divide num_layers={cfg.num_layers}")


def check_hf_tensors(hf: HFCheckpoint, mapping: DecoderMapping, cfg: ModelConfig) -> list[str]:
    """Every tensor the config implies exists with the implied shape.

    Returns the names of HF tensors no unit uses (ignored; e.g. a redundant
    ``lm_head.weight`` next to tied embeddings).
    """
    names = hf.names()
    used: set[str] = set()
    for unit in mapping.units(cfg):
        for name, shape in zip(unit.hf_names, hf_shapes(unit, cfg)):
            if name not in names:
                raise ConversionError(f"tensor {name} is missing from {hf.path} "
                                      f"(config.json implies it)")
            found = hf.shape(name)
            if found != shape:
                raise ConversionError(f"tensor {name} has shape {list(found)} but config.json "
                                      f"implies {list(shape)}")
            used.add(name)
    return sorted(names - used)


def check_output(out: Path) -> None:
    """``out`` must not exist, or be an empty directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"output directory {out} is not empty")
