"""Hugging Face ``config.json`` <-> :class:`ModelConfig` for Llama-style decoders."""

from __future__ import annotations

import warnings
from dataclasses import asdict

from maestro_megatron.config.schema import ModelConfig, RopeScalingConfig
from maestro_megatron.weights.errors import ConversionError


def rope_theta(hf: dict) -> float:
    """RoPE base: top-level ``rope_theta`` (transformers 4) or ``rope_parameters`` (5)."""
    params = hf.get("rope_parameters") or {}
    return float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _rope_dict(hf: dict) -> dict:
    """The RoPE scaling keys: ``rope_scaling`` (transformers 4) or ``rope_parameters`` (5)."""
    return hf.get("rope_scaling") or hf.get("rope_parameters") or {}


def _rope_type(hf: dict) -> str:
    scaling = _rope_dict(hf)
    return scaling.get("rope_type") or scaling.get("type") or "default"


LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings")


def rope_scaling(hf: dict) -> RopeScalingConfig | None:
    """config.json's llama3 RoPE scaling; None for unscaled (or unsupported) RoPE.

    A missing original_max_position_embeddings falls back to max_position_embeddings
    (as transformers does); other missing keys raise ConversionError.
    """
    if _rope_type(hf) != "llama3":
        return None
    params = dict(_rope_dict(hf))
    if "max_position_embeddings" in hf:
        params.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
    missing = [k for k in LLAMA3_KEYS if params.get(k) is None]
    if missing:
        raise ConversionError(f"config.json: llama3 rope scaling lacks {missing[0]!r}")
    return RopeScalingConfig(
        factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]))


def to_model_config(hf: dict, *, qkv_bias: bool, qk_norm: bool, **overrides) -> ModelConfig:
    """HF config dict -> ModelConfig. ``overrides``: other ModelConfig fields (hf_path, ...).

    seq_length is config.json's max_position_embeddings (ModelConfig's
    max_position_embeddings stays None, "the same"; a training run sets seq_length from
    its recipe, see `hf_model.hf_model_config`). Raises ConversionError for
    features megatron's GPTModel as built here cannot express (o_proj or MLP biases,
    non-SiLU activations). RoPE scaling of type llama3 (Llama 3.1) becomes
    ``rope_scaling``; other types (linear, dynamic, yarn, longrope, ...) only warn: the
    weights convert unchanged, but a megatron forward uses unscaled RoPE.
    """
    arch = (hf.get("architectures") or ["?"])[0]
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConversionError(f"{arch}: {key}=true is not supported (o_proj/MLP biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{arch}: hidden_act={hf['hidden_act']!r} is not supported (silu)")
    if _rope_type(hf) not in ("default", "llama3"):
        warnings.warn(f"{arch}: rope type {_rope_type(hf)!r} is not represented in "
                      "ModelConfig (llama3 is); weights convert unchanged, a megatron "
                      "forward uses unscaled RoPE", stacklevel=2)
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
            rope_scaling=rope_scaling(hf),
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
    tokenizer ids, rope types ModelConfig cannot express) that ModelConfig does not
    describe are kept. max_position_embeddings: cfg's, else seq_length; llama3
    ``rope_scaling`` is written in ``base``'s format (``rope_parameters`` of
    transformers 5 when ``base`` has it, else ``rope_scaling``)."""
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
        max_position_embeddings=cfg.max_position_embeddings or cfg.seq_length,
        rms_norm_eps=cfg.norm_epsilon,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_method_std,
    )
    if model_type != "qwen2":  # Qwen2 has fixed q/k/v biases and no head_dim key
        hf["attention_bias"] = False
        hf["head_dim"] = head_dim
    params = hf.get("rope_parameters")
    scaling = {} if cfg.rope_scaling is None else asdict(cfg.rope_scaling)
    if isinstance(params, dict):
        hf["rope_parameters"] = {**params, **scaling, "rope_theta": cfg.rotary_base}
    elif scaling:
        hf["rope_scaling"] = {**(hf.get("rope_scaling") or {}), **scaling}
    if "rope_theta" in hf or not isinstance(params, dict):
        hf["rope_theta"] = cfg.rotary_base
    if dtype is not None:
        hf["torch_dtype"] = dtype
        hf["dtype"] = dtype
    return hf
