"""Weights between Hugging Face and megatron-core (DESIGN.md section 5).

- :mod:`layout`: pure tensor functions (QKV per-group interleave, fc1 = [gate; up],
  vocabulary padding, TP shard/gather).
- :mod:`units`, :mod:`mapping`, per-architecture modules, :data:`MAPPINGS`: names.
- :mod:`hf_config`: HF ``config.json`` <-> :class:`ModelConfig`.
- :mod:`model_io`: HF weights into live GPTModel chunks; torch_dist save/load;
  :mod:`dist_save`: the torch_dist save written by the calling process.
- :mod:`dcp_read`: boxes of a torch_dist checkpoint's tensors; :mod:`ckpt_model`: the
  model a checkpoint holds (config, vocabulary, tokenizer), checked against its shapes.
- :mod:`convert`: the two checkpoint conversions; :mod:`cli`: ``maestro convert``.
"""

from __future__ import annotations

from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.mapping import DecoderMapping
from maestro_megatron.weights.registry import MAPPINGS, get_mapping, mapping_for_hf_config
from maestro_megatron.weights.units import Unit

__all__ = ["MAPPINGS", "ConversionError", "DecoderMapping", "Unit", "get_mapping",
           "mapping_for_hf_config"]
