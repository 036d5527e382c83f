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

from maestro_megatron.config.schema import (
    MemoryConfig,
    ModelConfig,
    ParallelConfig,
    PrecisionConfig,
)
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


def recompute_fields(memory_cfg: MemoryConfig, model_cfg: ModelConfig,
                     parallel_cfg: ParallelConfig) -> dict:
    """``memory.recompute`` -> megatron's TransformerConfig recompute fields.

    - none: nothing recomputed (megatron's ``recompute_granularity=None``).
    - selective: ``recompute_modules=["core_attn"]``: each layer's core attention
      (softmax(QK^T) V, whose [b, heads, S, S] scores dominate activation memory on the
      local spec) is re-run in backward; everything else is kept. megatron refuses
      ``recompute_num_layers`` with it. With Transformer Engine's fused attention the
      scores are never stored, so it saves little there (megatron warns).
    - full: ``recompute_method="uniform"``: only the input of every group of
      ``memory.recompute_num_layers`` consecutive layers is kept; the group's forward
      re-runs in backward. The groups tile each model chunk's layers
      (``num_layers / (PP * VPP)``), so the count must divide that.
    """
    if memory_cfg.recompute == "none":
        return {}
    if memory_cfg.recompute == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    if memory_cfg.recompute != "full":
        raise ValueError(f"memory.recompute={memory_cfg.recompute!r}: expected "
                         "none|selective|full")
    per_chunk = model_cfg.num_layers // (parallel_cfg.pipeline_parallel
                                         * (parallel_cfg.virtual_pipeline_parallel or 1))
    group = memory_cfg.recompute_num_layers
    if group < 1 or per_chunk % group:
        raise ValueError(f"memory.recompute_num_layers={group} must divide the "
                         f"{per_chunk} layers of each model chunk (model.num_layers / "
                         "(pipeline_parallel x virtual_pipeline_parallel))")
    return {"recompute_granularity": "full", "recompute_method": "uniform",
            "recompute_num_layers": group}


def build_transformer_config(
    model_cfg: ModelConfig, parallel_cfg: ParallelConfig, precision_cfg: PrecisionConfig,
    memory_cfg: MemoryConfig | None = None,
):
    """The only place a ``megatron.core.transformer.TransformerConfig`` is built.

    ``memory_cfg``: activation recomputation (`recompute_fields`); None: the defaults
    (no recomputation: what a frozen, forward-only model needs).
    """
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
    recompute = recompute_fields(memory_cfg or MemoryConfig(), model_cfg, parallel_cfg)
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
        **recompute,
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
    memory_cfg: MemoryConfig | None = None,
) -> list[torch.nn.Module]:
    """The model chunks of this pipeline stage: one, or VPP interleaved chunks.

    ``wrap_ddp``: wrap each chunk in megatron's DistributedDataParallel (contiguous grad
    buffers, as the distributed optimizer needs). ``freeze``: reference model; eval
    mode, ``requires_grad=False``, forward only. ``memory_cfg`` (None: defaults):
    activation recomputation (`recompute_fields`) and the grad buffers
    (`build_ddp_config`).
    """
    from megatron.core.distributed import DistributedDataParallel, finalize_model_grads

    if wrap_ddp and freeze:
        raise ValueError("a frozen (reference) model is never wrapped for training")
    memory_cfg = memory_cfg or MemoryConfig()
    config = build_transformer_config(model_cfg, parallel_cfg, precision_cfg, memory_cfg)
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
        chunks.append(_to_accelerator(model, config.params_dtype))
    if wrap_ddp:
        ddp_config = build_ddp_config(parallel_cfg, memory_cfg)
        chunks = [
            # Megatron buckets only the first chunk; later VPP chunks reduce as one bucket.
            DistributedDataParallel(config, ddp_config, m, disable_bucketing=i > 0)
            for i, m in enumerate(chunks)
        ]
        # The schedules call this after the last backward: DP grad all-reduce (or
        # reduce-scatter), tied-embedding grads across pipeline stages, SP norm grads.
        config.finalize_model_grads_func = finalize_model_grads
        if ddp_config.overlap_grad_reduce:
            # A bucket's hook starts its reduction once all its grads are in; the
            # schedules hold the hooks back (no_sync) for all but the last micro-batch.
            no_sync = [m.no_sync for m in chunks]
            config.no_sync_func = no_sync if len(no_sync) > 1 else no_sync[0]
    return chunks


def build_ddp_config(parallel_cfg: ParallelConfig, memory_cfg: MemoryConfig):
    """megatron's DistributedDataParallelConfig of the policy.

    ``memory.grad_reduce_in_fp32``: the contiguous grad buffers (and their DP
    all-reduce / reduce-scatter) in fp32, else in the parameter dtype (bf16: half the
    gradient memory; on CPU parameters are fp32 and both are the same).
    ``memory.overlap_grad_reduce``: each bucket (megatron's default size, max(4e7,
    1e6 x DP) parameters) starts an asynchronous reduction from its backward hook as
    soon as its last gradient of the last micro-batch is in; ``finalize_model_grads``
    then only waits (the first step issues them there, after recording each bucket's
    gradient count). Off: one synchronous reduction of the whole buffer, there.
    """
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=memory_cfg.grad_reduce_in_fp32,
        overlap_grad_reduce=memory_cfg.overlap_grad_reduce,
        use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
    )


def _to_accelerator(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Every parameter and buffer on this rank's GPU in the parameter dtype.

    megatron-core creates its own layers on ``current_device()`` in ``params_dtype``, but
    the local spec's torch norms (RMSNorm without apex) are created on the host in fp32;
    Megatron-LM moves the model (``.cuda()``) and casts it (``Float16Module``) after
    building it. On CPU ``.cuda()`` is a no-op (cpu_compat) and runs are fp32.
    """
    model.cuda(torch.cuda.current_device())
    if dtype != torch.float32:
        model.to(dtype)
    return model


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model
