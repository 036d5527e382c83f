"""Building the policy/reference GPTModel: the one TransformerConfig, layer spec, chunks.

Llama/Qwen-style decoder: RMSNorm, SwiGLU, RoPE, GQA, no linear biases (optional QKV
bias for Qwen2, per-head QK RMSNorm for Qwen3). The Transformer Engine spec (with
optional FP8) is used on GPU when TE imports; the local spec otherwise (CPU).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F

from maestro_megatron.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from maestro_megatron.megatron.cpu_compat import config_overrides

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def te_available() -> bool:
    """Transformer Engine importable (without importing it: that can be slow)."""
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_transformer_impl(precision_cfg: PrecisionConfig) -> str:
    """``precision.transformer_impl`` -> "transformer_engine" | "local"."""
    impl = precision_cfg.transformer_impl
    te_ok = torch.cuda.is_available() and te_available()
    if impl == "auto":
        return "transformer_engine" if te_ok else "local"
    if impl == "transformer_engine" and not te_ok:
        raise ValueError(
            "precision.transformer_impl=transformer_engine needs a GPU and transformer_engine"
        )
    if impl not in ("local", "transformer_engine"):
        raise ValueError(
            f"precision.transformer_impl={impl!r}: expected auto|local|transformer_engine"
        )
    return impl


def resolve_dtype(precision_cfg: PrecisionConfig) -> torch.dtype:
    """Parameter/compute dtype; CPU runs are always fp32 (DESIGN.md section 4)."""
    if precision_cfg.dtype not in _DTYPES:
        raise ValueError(f"precision.dtype={precision_cfg.dtype!r}: expected fp32|bf16|fp16")
    if not torch.cuda.is_available() and precision_cfg.dtype != "fp32":
        warnings.warn(f"precision.dtype={precision_cfg.dtype} on CPU: using fp32", stacklevel=2)
        return torch.float32
    return _DTYPES[precision_cfg.dtype]


def padded_vocab_size(model_cfg: ModelConfig, tp: int) -> int:
    """Vocabulary padded up to a multiple of make_vocab_size_divisible_by * TP."""
    multiple = model_cfg.make_vocab_size_divisible_by * tp
    return -(-model_cfg.vocab_size // multiple) * multiple


def build_transformer_config(
    model_cfg: ModelConfig, parallel_cfg: ParallelConfig, precision_cfg: PrecisionConfig
):
    """The only place a ``megatron.core.transformer.TransformerConfig`` is built."""
    from megatron.core.transformer import TransformerConfig

    impl = resolve_transformer_impl(precision_cfg)
    dtype = resolve_dtype(precision_cfg)
    fp8 = precision_cfg.fp8
    if fp8 is not None and impl != "transformer_engine":
        warnings.warn(f"precision.fp8={fp8} needs Transformer Engine on GPU: FP8 off",
                      stacklevel=2)
        fp8 = None
    if parallel_cfg.sequence_parallel and impl != "transformer_engine":
        # The local spec's torch norms cannot run on sequence-sharded activations.
        raise ValueError("parallel.sequence_parallel=true needs precision.transformer_impl "
                         "resolving to transformer_engine (GPU + TE)")
    return TransformerConfig(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.ffn_hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.num_query_groups,
        kv_channels=model_cfg.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model_cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model_cfg.add_qkv_bias,
        qk_layernorm=model_cfg.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model_cfg.init_method_std,
        tensor_model_parallel_size=parallel_cfg.tensor_parallel,
        pipeline_model_parallel_size=parallel_cfg.pipeline_parallel,
        virtual_pipeline_model_parallel_size=parallel_cfg.virtual_pipeline_parallel,
        context_parallel_size=parallel_cfg.context_parallel,
        sequence_parallel=parallel_cfg.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        fp8=fp8,
        transformer_impl=impl,
        # Unfused paths: identical math everywhere, no apex/TE kernels required.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        cuda_graph_scope=[],  # the whole layer; megatron's default "full" is deprecated
        **config_overrides(),
    )


def layer_spec(model_cfg: ModelConfig, config):
    """TE layer spec when ``config.transformer_impl`` is TE, else the local (torch) spec."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if config.transformer_impl == "transformer_engine":
        return specs.get_gpt_layer_with_transformer_engine_spec(
            qk_layernorm=model_cfg.qk_layernorm
        )
    return specs.get_gpt_layer_local_spec(
        qk_layernorm=model_cfg.qk_layernorm, normalization="RMSNorm"
    )


def build_gpt_model(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision_cfg: PrecisionConfig,
    *,
    pre_process: bool,
    post_process: bool,
    vp_stage: int | None = None,
    config=None,
):
    """One GPTModel chunk. ``parallel_output=True``: logits stay vocab-sharded [S, B, V/TP].

    ``model_cfg.rope_scaling`` (llama3) sets the rotary embedding's inverse frequencies
    [kv_channels / 2] from `rope.scaled_inv_freq`: megatron's own ``rope_scaling`` flag
    hard-codes three of the four llama3 parameters.
    """
    from megatron.core.models.gpt import GPTModel

    from maestro_megatron.megatron.rope import scaled_inv_freq

    config = config or build_transformer_config(model_cfg, parallel_cfg, precision_cfg)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model_cfg, config),
        vocab_size=padded_vocab_size(model_cfg, parallel_cfg.tensor_parallel),
        max_sequence_length=model_cfg.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=model_cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(model_cfg.rotary_base),
        vp_stage=vp_stage,
    )
    if model_cfg.rope_scaling is not None:
        rope = model.rotary_pos_emb  # before any forward: its embeddings are cached
        rope.inv_freq = scaled_inv_freq(rope.inv_freq, model_cfg.rope_scaling)
    return model


def build_model(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision_cfg: PrecisionConfig,
    *,
    pp_rank: int,
    pp_size: int,
    wrap_ddp: bool = False,
    freeze: bool = False,
) -> list[torch.nn.Module]:
    """The model chunks of this pipeline stage: one, or VPP interleaved chunks.

    ``wrap_ddp``: wrap each chunk in megatron's DistributedDataParallel (contiguous grad
    buffers, as the distributed optimizer needs). ``freeze``: reference model; eval
    mode, ``requires_grad=False``, forward only.
    """
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    if wrap_ddp and freeze:
        raise ValueError("a frozen (reference) model is never wrapped for training")
    config = build_transformer_config(model_cfg, parallel_cfg, precision_cfg)
    vpp = parallel_cfg.virtual_pipeline_parallel
    num_chunks = vpp or 1
    chunks: list[torch.nn.Module] = []
    for chunk in range(num_chunks):
        model = build_gpt_model(
            model_cfg, parallel_cfg, precision_cfg,
            pre_process=pp_rank == 0 and chunk == 0,
            post_process=pp_rank == pp_size - 1 and chunk == num_chunks - 1,
            vp_stage=chunk if vpp else None,
            config=config,
        )
        if freeze:
            model.eval()
            model.requires_grad_(False)
        chunks.append(model)
    if wrap_ddp:
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
        )
        chunks = [
            # Megatron buckets only the first chunk; later VPP chunks reduce as one bucket.
            DistributedDataParallel(config, ddp_config, m, disable_bucketing=i > 0)
            for i, m in enumerate(chunks)
        ]
        # The schedules call this after the last backward: DP grad all-reduce (or
        # reduce-scatter), tied-embedding grads across pipeline stages, SP norm grads.
        config.finalize_model_grads_func = finalize_model_grads
    return chunks


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model
