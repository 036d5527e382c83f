"""A Llama-family decoder mapping; each architecture module instantiates one.

Megatron side: ``GPTModel`` with RMSNorm, SwiGLU, RoPE, GQA (``build_gpt_model``).
HF side: ``model.embed_tokens``, ``model.layers.{i}.{self_attn,mlp,...}``, ``model.norm``,
``lm_head`` (absent when embeddings are tied).
"""

from __future__ import annotations

from dataclasses import dataclass

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights import hf_config
from maestro_megatron.weights.units import Unit


@dataclass(frozen=True)
class DecoderMapping:
    """HF <-> megatron names and layouts for one Llama-style architecture."""

    architecture: str
    """HF ``architectures[0]``, e.g. ``LlamaForCausalLM``."""
    model_type: str
    """HF ``model_type``, e.g. ``llama``."""
    qkv_bias: bool
    """The architecture always has q/k/v biases (Qwen2) and no o_proj bias."""
    qk_norm: bool
    """Per-head RMSNorm on queries and keys (Qwen3)."""
    hf_prefix: str = "model."
    """Prefix of the decoder's HF names."""

    def units(self, cfg: ModelConfig) -> list[Unit]:
        """Every megatron tensor of ``cfg`` and its HF tensors, embedding first."""
        p = self.hf_prefix
        units = [Unit("vocab", "column", (f"{p}embed_tokens.weight",),
                      "embedding.word_embeddings.weight", "embedding.word_embeddings.weight")]
        for i in range(cfg.num_layers):
            units.extend(self.layer_units(cfg, i))
        units.append(Unit("copy", "replicated", (f"{p}norm.weight",),
                          "decoder.final_layernorm.weight", "decoder.final_layernorm.weight"))
        if not cfg.tie_embeddings:
            units.append(Unit("vocab", "column", ("lm_head.weight",),
                              "output_layer.weight", "output_layer.weight"))
        return units

    def layer_units(self, cfg: ModelConfig, i: int) -> list[Unit]:
        """The units of global layer ``i``."""
        h = f"{self.hf_prefix}layers.{i}."
        attn, mlp = f"{h}self_attn.", f"{h}mlp."
        qkv = "self_attention.linear_qkv."
        units = [
            Unit("copy", "replicated", (f"{h}input_layernorm.weight",),
                 "input_layernorm.weight", f"{qkv}layer_norm_weight", i),
            Unit("qkv", "column", tuple(f"{attn}{x}_proj.weight" for x in "qkv"),
                 f"{qkv}weight", f"{qkv}weight", i),
        ]
        if cfg.add_qkv_bias:
            units.append(Unit("qkv", "column", tuple(f"{attn}{x}_proj.bias" for x in "qkv"),
                              f"{qkv}bias", f"{qkv}bias", i))
        if cfg.qk_layernorm:
            for x in "qk":
                name = f"self_attention.{x}_layernorm.weight"
                units.append(Unit("copy", "replicated", (f"{attn}{x}_norm.weight",),
                                  name, name, i))
        units += [
            Unit("copy", "row", (f"{attn}o_proj.weight",), "self_attention.linear_proj.weight",
                 "self_attention.linear_proj.weight", i),
            Unit("copy", "replicated", (f"{h}post_attention_layernorm.weight",),
                 "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight", i),
            Unit("fc1", "fc1", (f"{mlp}gate_proj.weight", f"{mlp}up_proj.weight"),
                 "mlp.linear_fc1.weight", "mlp.linear_fc1.weight", i),
            Unit("copy", "row", (f"{mlp}down_proj.weight",), "mlp.linear_fc2.weight",
                 "mlp.linear_fc2.weight", i),
        ]
        return units

    def model_config(self, hf: dict, **overrides) -> ModelConfig:
        """HF ``config.json`` dict -> :class:`ModelConfig` (raises ConversionError)."""
        return hf_config.to_model_config(hf, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm,
                                         **overrides)

    def hf_config(self, cfg: ModelConfig, base: dict | None = None,
                  dtype: str | None = None) -> dict:
        """:class:`ModelConfig` -> HF ``config.json`` dict (``base``'s other keys kept)."""
        if cfg.add_qkv_bias != self.qkv_bias or cfg.qk_layernorm != self.qk_norm:
            from maestro_megatron.weights.errors import ConversionError

            raise ConversionError(
                f"{self.architecture} needs add_qkv_bias={self.qkv_bias} and "
                f"qk_layernorm={self.qk_norm}; the model config has "
                f"{cfg.add_qkv_bias} and {cfg.qk_layernorm}")
        return hf_config.from_model_config(cfg, self.architecture, self.model_type,
                                           base=base, dtype=dtype)
