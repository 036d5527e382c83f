"""Llama (``LlamaForCausalLM``: Llama 2/3/3.1/3.2 dense): no biases, no QK norm."""

from __future__ import annotations

from maestro_megatron.weights.mapping import DecoderMapping

MAPPING = DecoderMapping("LlamaForCausalLM", "llama", qkv_bias=False, qk_norm=False)
