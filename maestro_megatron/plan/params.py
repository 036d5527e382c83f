"""Parameter counts per GPU from the model config alone (pure arithmetic: no torch).

The decoder megatron-core builds (maestro_megatron/megatron/model.py: RMSNorm, SwiGLU,
GQA with RoPE, no linear biases), h = hidden, f = ffn, a = heads, g = query groups,
d = head dim, t = TP. Per transformer layer:

    linear_qkv   h (a + 2g) d   [+ (a + 2g) d bias, Qwen2]      / t
    linear_proj  a d h                                           / t
    linear_fc1   2 h f           (gate and up)                   / t
    linear_fc2   f h                                             / t
    norms        2 h             [+ 2 d q/k norms, Qwen3]        replicated on every TP rank

Pipeline stage p of P holds L / P layers; the first stage also the embedding
V_pad h / t, the last the output layer V_pad h / t (untied; tied with P > 1: a copy of
the embedding, as megatron keeps one there) and the final norm h (replicated).
V_pad = vocab rounded up to make_vocab_size_divisible_by x t (megatron's padding, the
same rule as `maestro_megatron.megatron.model.padded_vocab_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

from maestro_megatron.config.schema import ModelConfig


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """vocab_size rounded up to a multiple of divisible_by x tp."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def head_dim(model: ModelConfig) -> int:
    """d: kv_channels, or hidden / heads."""
    return model.kv_channels or model.hidden_size // model.num_attention_heads


def layer_linear_parameters(model: ModelConfig, tp: int) -> int:
    """GEMM weights of one layer on one TP rank (QKV, proj, fc1, fc2; what FP8 casts)."""
    h, f, d = model.hidden_size, model.ffn_hidden_size, head_dim(model)
    a, g = model.num_attention_heads, model.num_query_groups
    return (h * (a + 2 * g) * d + a * d * h + 2 * h * f + f * h) // tp


def layer_parameters(model: ModelConfig, tp: int) -> int:
    """All parameters of one layer on one TP rank: sharded / tp + replicated norms."""
    d = head_dim(model)
    bias = (model.num_attention_heads + 2 * model.num_query_groups) * d // tp \
        if model.add_qkv_bias else 0
    norms = 2 * model.hidden_size + (2 * d if model.qk_layernorm else 0)
    return layer_linear_parameters(model, tp) + bias + norms


@dataclass(frozen=True)
class StageParameters:
    """Parameters one GPU of a pipeline stage holds (counts, not bytes)."""

    num_layers: int
    layers: int
    """All transformer-layer parameters of the stage (sharded + replicated)."""
    linear: int
    """Of those, the GEMM weights (FP8 weight caches are sized from these)."""
    embedding: int
    output_layer: int
    final_norm: int

    @property
    def total(self) -> int:
        return self.layers + self.embedding + self.output_layer + self.final_norm


def stage_parameters(model: ModelConfig, tp: int, pp: int, stage: int) -> StageParameters:
    """One GPU of pipeline stage `stage` (0-based) of `pp`, at tensor parallelism `tp`."""
    num_layers = model.num_layers // pp
    vocab = padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, tp)
    table = vocab * model.hidden_size // tp
    first, last = stage == 0, stage == pp - 1
    output = table if last and (not model.tie_embeddings or pp > 1) else 0
    return StageParameters(
        num_layers=num_layers,
        layers=num_layers * layer_parameters(model, tp),
        linear=num_layers * layer_linear_parameters(model, tp),
        embedding=table if first else 0,
        output_layer=output,
        final_norm=model.hidden_size if last else 0)


def model_parameters(model: ModelConfig) -> int:
    """The whole model at TP = PP = 1 (what Hugging Face counts when the vocabulary needs
    no padding: Qwen3-8B 8,190,735,360; Llama-3.1-70B 70,553,706,496)."""
    return stage_parameters(model, 1, 1, 0).total


def engine_parameters_per_gpu(model: ModelConfig, engine_tp: int) -> int:
    """The rollout engine's weights on one of its GPUs (vLLM, unpadded vocabulary): the
    matrices / engine TP, norms replicated; with engine TP > query groups each GPU
    keeps one whole KV head (vLLM replicates them)."""
    h, f, d = model.hidden_size, model.ffn_hidden_size, head_dim(model)
    a, g = model.num_attention_heads, model.num_query_groups
    kv_heads = kv_heads_per_gpu(g, engine_tp)
    qkv = h * (a / engine_tp + 2 * kv_heads) * d
    per_layer = qkv + (a * d * h + 3 * h * f) / engine_tp + 2 * h \
        + (2 * d if model.qk_layernorm else 0)
    if model.add_qkv_bias:
        per_layer += (a / engine_tp + 2 * kv_heads) * d
    tables = (1 if model.tie_embeddings else 2) * model.vocab_size * h / engine_tp
    return int(model.num_layers * per_layer + tables + h)


def kv_heads_per_gpu(num_query_groups: int, engine_tp: int) -> float:
    """KV heads one engine GPU caches: g / engine TP, at least one (vLLM replicates)."""
    return max(num_query_groups // engine_tp, 1) if engine_tp > num_query_groups \
        else num_query_groups / engine_tp


# --- Hugging Face reward models (config.json -> parameter count) --------------------

_DECODERS = {"llama", "mistral", "qwen2", "qwen3"}


def hf_parameters(config: dict) -> int | None:
    """Parameters of a Hugging Face sequence-classification model from its config.json
    (Llama / Mistral / Qwen2 / Qwen3 decoders with a score head, BERT encoders with a
    pooler, as `AutoModel` loads an embedding model). None: an architecture this does
    not know (give rewards.pref.num_parameters instead).

    Decoder: V h + L [h (a + 2g) d + a d h + 3 h f + 2 h (+ qkv bias, + 2 d q/k norms)]
    + h (final norm) + num_labels h (score). BERT: (V + P + types) h + 2 h
    + L [4 h^2 + 4 h + 2 h f + f + h + 4 h] + h^2 + h.
    """
    kind = config.get("model_type")
    h, L = config.get("hidden_size"), config.get("num_hidden_layers")
    f, a = config.get("intermediate_size"), config.get("num_attention_heads")
    vocab = config.get("vocab_size")
    if not all(isinstance(x, int) and x > 0 for x in (h, L, f, a, vocab)):
        return None
    if kind in _DECODERS:
        g = config.get("num_key_value_heads") or a
        d = config.get("head_dim") or h // a
        attn = h * (a + 2 * g) * d + a * d * h
        if kind == "qwen2" or config.get("attention_bias"):
            attn += (a + 2 * g) * d + (h if config.get("attention_bias") else 0)
        if kind == "qwen3":
            attn += 2 * d
        mlp = 3 * h * f + ((2 * f + h) if config.get("mlp_bias") else 0)
        num_labels = len(config.get("id2label") or {}) or config.get("num_labels") or 1
        return vocab * h + L * (attn + mlp + 2 * h) + h + num_labels * h
    if kind == "bert":
        positions = config.get("max_position_embeddings", 512)
        types = config.get("type_vocab_size", 2)
        layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
        return (vocab + positions + types) * h + 2 * h + L * layer + h * h + h
    return None
