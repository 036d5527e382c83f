"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``): biases on q/k/v (none on o_proj)."""

from __future__ import annotations

from maestro_megatron.weights.mapping import DecoderMapping

MAPPING = DecoderMapping("Qwen2ForCausalLM", "qwen2", qkv_bias=True, qk_norm=False)
