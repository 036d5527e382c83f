"""Qwen3 dense (``Qwen3ForCausalLM``): per-head RMSNorm on q and k, explicit head_dim."""

from __future__ import annotations

from maestro_megatron.weights.mapping import DecoderMapping

MAPPING = DecoderMapping("Qwen3ForCausalLM", "qwen3", qkv_bias=False, qk_norm=True)
