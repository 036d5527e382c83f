"""Hugging Face ``config.json`` <-> :class:`ModelConfig` for Llama-style decoders."""

from __future__ import annotations

import warnings

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights.errors import ConversionError


def rope_theta(hf: dict) -> float:
    """RoPE base: top-level ``rope_theta`` (transformers 4) or ``rope_parameters`` (5)."""
    params = hf.get("rope_parameters") or {}
    return float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _rope_type(hf: dict) -> str:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    return scaling.get("rope_type") or scaling.get("type") or "default"


def to_model_config(hf: dict, *, qkv_bias: bool, qk_norm: bool, **overrides) -> ModelConfig:
    """HF config dict -> ModelConfig. ``overrides``: other ModelConfig fields (hf_path, ...).

    Raises ConversionError for features megatron's GPTModel as built here cannot express
    (o_proj or MLP biases, non-SiLU activations). Non-default RoPE scaling (Llama 3.1's
    ``llama3``) only warns: the weights convert unchanged, but ModelConfig has no field
    for it, so a megatron forward would use unscaled RoPE.
    """
    arch = (hf.get("architectures") or ["?"])[0]
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConversionError(f"{arch}: {key}=true is not supported (o_proj/MLP biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{arch}: hidden_act={hf['hidden_act']!r} is not supported (silu)")
    if _rope_type(hf) != "default":
        warnings.warn(f"{arch}: rope type {_rope_type(hf)!r} is not represented in "
                      "ModelConfig; weights convert unchanged", stacklevel=2)
    if hf.get("use_sliding_window"):
        warnings.warn(f"{arch}: sliding-window attention is not represented", stacklevel=2)
    try:
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = hf.get("head_dim")
        fields = dict(
            num_layers=int(hf["num_hidden_layers"]),
            hidden_size=hidden,
            ffn_hidden_size=int(hf["intermediate_size"]),
            num_attention_heads=heads,
            num_query_groups=int(hf.get("num_key_value_heads") or heads),
            kv_channels=None if head_dim in (None, hidden // heads) else int(head_dim),
            vocab_size=int(hf["vocab_size"]),
            seq_length=int(hf.get("max_position_embeddings", 4096)),
            rotary_base=rope_theta(hf),
            norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
            add_qkv_bias=qkv_bias,
            qk_layernorm=qk_norm,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_method_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as exc:
        raise ConversionError(f"config.json lacks {exc.args[0]!r}") from None
    fields.update(overrides)
    return ModelConfig(**fields)


def from_model_config(cfg: ModelConfig, architecture: str, model_type: str, *,
                      base: dict | None = None, dtype: str | None = None) -> dict:
    """ModelConfig -> HF config dict. Keys of ``base`` (the source config.json, e.g.
    tokenizer ids, rope scaling) that ModelConfig does not describe are kept."""
    hf = dict(base or {})
    head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    hf.update(
        architectures=[architecture],
        model_type=model_type,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_length,
        rms_norm_eps=cfg.norm_epsilon,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_method_std,
    )
    if model_type != "qwen2":  # Qwen2 has fixed q/k/v biases and no head_dim key
        hf["attention_bias"] = False
        hf["head_dim"] = head_dim
    params = hf.get("rope_parameters")
    if isinstance(params, dict):
        hf["rope_parameters"] = {**params, "rope_theta": cfg.rotary_base}
    if "rope_theta" in hf or not isinstance(params, dict):
        hf["rope_theta"] = cfg.rotary_base
    if dtype is not None:
        hf["torch_dtype"] = dtype
        hf["dtype"] = dtype
    return hf
