"""Input validation done before any process group or model exists (fast, clear errors)."""

from __future__ import annotations

from pathlib import Path

from maestro_megatron.config.schema import ModelConfig, ParallelConfig
from maestro_megatron.config.validate import check_layout as validate_layout
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.hf_io import HFCheckpoint
from maestro_megatron.weights.mapping import DecoderMapping
from maestro_megatron.weights.units import hf_shapes

_FLAGS = {"parallel.tensor_parallel": "--tp", "parallel.pipeline_parallel": "--pp"}


def check_layout(cfg: ModelConfig, tp: int, pp: int) -> None:
    """The recipe's layout rules (`config.validate.check_layout`), worded for the
    converter's flags: "--tp 3 does not divide num_attention_heads=4"."""
    try:
        validate_layout(cfg, ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp))
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        flag = _FLAGS.get(key)
        if flag is None:
            raise ConversionError(str(exc)) from None
        raise ConversionError(f"{flag} {message.replace('model.', '')}") from None


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
