"""GPU only: the Transformer Engine layer spec in bf16, and with FP8 ("hybrid" format).

Builds the policy through the same code as on CPU (``build_model`` resolves the TE spec
because CUDA and transformer_engine are present) and runs one forward + backward through
megatron's schedule with the vocab-parallel log-probs. Skipped without CUDA; the TE
parts are skipped when transformer_engine is not installed, FP8 when the GPU lacks it.
"""

from __future__ import annotations

import pytest
import torch

from maestro_megatron.config.schema import ModelConfig, ParallelConfig, PrecisionConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# FP8 GEMMs need dims that are multiples of 16: tokens (B*S), hidden, ffn, qkv, vocab.
MODEL = ModelConfig(num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=4,
                    num_query_groups=2, vocab_size=250, make_vocab_size_divisible_by=128,
                    seq_length=64, qk_layernorm=True)
PARALLEL = ParallelConfig(use_distributed_optimizer=True)


def _fp8_supported() -> tuple[bool, str]:
    import transformer_engine.pytorch as te

    if hasattr(te, "is_fp8_available"):  # TE >= 2.x
        return te.is_fp8_available(return_reason=True)
    from transformer_engine.pytorch.fp8 import check_fp8_support  # TE 1.x

    return check_fp8_support()


@pytest.fixture(scope="module")
def groups():
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed

    yield init_distributed(PARALLEL, MODEL, seed=1234)
    destroy_distributed()


def _batch():
    from maestro_megatron.megatron.forward import SequenceBatch

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, MODEL.vocab_size, (4, 32), generator=gen)
    mask = torch.zeros(4, 32)
    mask[:, 8:28] = 1
    return SequenceBatch(tokens=tokens.cuda(), response_mask=mask.cuda())


def _forward_backward(groups, precision: PrecisionConfig, impl: str = "transformer_engine"):
    from maestro_megatron.megatron.forward import run_forward_backward
    from maestro_megatron.megatron.model import build_model, unwrap_model

    chunks = build_model(MODEL, PARALLEL, precision, pp_rank=groups.pp_rank,
                         pp_size=groups.pp_size, wrap_ddp=True)
    config = unwrap_model(chunks[0]).config
    assert config.transformer_impl == impl
    for chunk in chunks:
        chunk.zero_grad_buffer()
    batch = _batch()
    num_tokens = float(batch.response_mask.sum())

    def loss_fn(logprobs, entropy, h, micro_batch):
        loss = -(logprobs * micro_batch.response_mask).sum() / num_tokens
        return loss, {"loss": loss.detach()}

    out = run_forward_backward(chunks, batch, groups, micro_batch_size=2,
                               vocab_size=MODEL.vocab_size, loss_fn=loss_fn)
    grads = [p.main_grad for c in chunks for p in c.parameters() if p.requires_grad]
    return config, out, grads


def _check(out, grads):
    assert out.logprobs.shape == (4, 32) and out.h.shape == (4, MODEL.hidden_size)
    response = out.logprobs[:, 8:28]
    assert torch.isfinite(response).all() and (response <= 0).all()
    assert torch.isfinite(out.entropy).all() and torch.isfinite(out.h).all()
    loss = sum(float(m["loss"]) for m in out.metrics)
    assert 0.0 < loss < 3 * torch.log(torch.tensor(float(MODEL.vocab_size))).item()
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.float().abs().sum()) for g in grads) > 0


def test_local_spec_bf16_forward_backward(groups):
    """The path a GPU without Transformer Engine takes: megatron's local spec in bf16."""
    config, out, grads = _forward_backward(
        groups, PrecisionConfig(dtype="bf16", transformer_impl="local"), impl="local")
    assert config.bf16 and config.params_dtype == torch.bfloat16
    _check(out, grads)


def test_te_spec_bf16_forward_backward(groups):
    pytest.importorskip("transformer_engine.pytorch")
    config, out, grads = _forward_backward(
        groups, PrecisionConfig(dtype="bf16", transformer_impl="transformer_engine"))
    assert config.bf16 and config.fp8 is None
    _check(out, grads)


def test_te_spec_fp8_hybrid_forward_backward(groups):
    pytest.importorskip("transformer_engine.pytorch")
    supported, reason = _fp8_supported()
    if not supported:
        pytest.skip(f"FP8 not supported here: {reason}")
    config, out, grads = _forward_backward(
        groups, PrecisionConfig(dtype="bf16", fp8="hybrid", transformer_impl="transformer_engine"))
    assert config.fp8 == "hybrid" and config.bf16
    _check(out, grads)
