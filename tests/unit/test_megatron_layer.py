"""Megatron layer, single process: layout validation, vocab padding, config, vocab math."""

from __future__ import annotations

import pytest
import torch

from maestro_megatron.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from maestro_megatron.megatron.model import padded_vocab_size
from maestro_megatron.megatron.parallel import _launcher_env, validate_layout
from maestro_megatron.megatron.vocab_parallel import vocab_parallel_logprobs_and_entropy

MODEL = ModelConfig(num_layers=4, num_attention_heads=4, num_query_groups=2)


@pytest.mark.parametrize(
    ("parallel", "world", "message"),
    [
        (ParallelConfig(tensor_parallel=3), 3,
         "parallel.tensor_parallel: 3 does not divide model.num_attention_heads=4"),
        (ParallelConfig(tensor_parallel=4), 4,
         "parallel.tensor_parallel: 4 does not divide model.num_query_groups=2"),
        (ParallelConfig(pipeline_parallel=3), 3,
         "parallel.pipeline_parallel: 3 does not divide model.num_layers=4"),
        (ParallelConfig(pipeline_parallel=2, virtual_pipeline_parallel=4), 2,
         "parallel.virtual_pipeline_parallel: parallel.pipeline_parallel=2 x 4 does not "
         "divide model.num_layers=4"),
        (ParallelConfig(virtual_pipeline_parallel=2), 1,
         "parallel.virtual_pipeline_parallel: needs parallel.pipeline_parallel > 1"),
        (ParallelConfig(tensor_parallel=2), 3,
         "parallel: world size 3 is not divisible by tensor_parallel x pipeline_parallel"),
        (ParallelConfig(sequence_parallel=True), 1,
         "parallel.sequence_parallel: needs parallel.tensor_parallel > 1"),
        (ParallelConfig(context_parallel=0), 1, "parallel.context_parallel: must be >= 1, got 0"),
    ],
)
def test_bad_layout_names_the_key(parallel, world, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("+", r"\+")):
        validate_layout(MODEL, parallel, world)


@pytest.mark.parametrize(
    ("parallel", "world"),
    [
        (ParallelConfig(), 1),
        (ParallelConfig(tensor_parallel=2, pipeline_parallel=2), 8),
        (ParallelConfig(pipeline_parallel=2, virtual_pipeline_parallel=2), 2),
        (ParallelConfig(tensor_parallel=2, sequence_parallel=True), 2),
    ],
)
def test_good_layout_passes(parallel, world):
    validate_layout(MODEL, parallel, world)


def test_padded_vocab_size():
    cfg = ModelConfig(vocab_size=250, make_vocab_size_divisible_by=128)
    assert padded_vocab_size(cfg, 1) == 256
    assert padded_vocab_size(cfg, 2) == 256
    assert padded_vocab_size(cfg, 4) == 512
    assert padded_vocab_size(ModelConfig(vocab_size=256), 2) == 256


def test_launcher_env_reads_torchrun_then_slurm(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    assert _launcher_env() == (0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert _launcher_env() == (5, 8, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert _launcher_env() == (3, 4, 3)


def test_vocab_logprobs_without_tp_match_log_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(2, 5, 16, generator=gen)).requires_grad_(True)
    target = torch.randint(0, 12, (2, 5), generator=gen)
    logprobs, entropy = vocab_parallel_logprobs_and_entropy(logits, target, None, vocab_size=12)
    logprobs.sum().backward()

    ref_logits = logits.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(ref_logits[..., :12], dim=-1)
    ref_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    ref_lp.sum().backward()
    torch.testing.assert_close(logprobs, ref_lp.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(entropy, -(logp.exp() * logp).sum(-1).detach(),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-6)


def test_transformer_config_is_llama_style_fp32_local_on_cpu():
    pytest.importorskip("megatron.core")
    if torch.cuda.is_available():
        pytest.skip("checks the CPU resolution of dtype and layer spec")
    from maestro_megatron.megatron.model import build_transformer_config

    model = ModelConfig(qk_layernorm=True, add_qkv_bias=True, kv_channels=32)
    with pytest.warns(UserWarning, match="FP8 off"):
        cfg = build_transformer_config(model, ParallelConfig(),
                                       PrecisionConfig(dtype="fp32", fp8="hybrid"))
    assert cfg.normalization == "RMSNorm"
    assert cfg.gated_linear_unit and cfg.activation_func is torch.nn.functional.silu
    assert not cfg.add_bias_linear and cfg.add_qkv_bias and cfg.qk_layernorm
    assert cfg.kv_channels == 32 and cfg.num_query_groups == model.num_query_groups
    assert cfg.params_dtype == torch.float32 and cfg.fp8 is None
    assert cfg.transformer_impl == "local"
    assert cfg.hidden_dropout == 0.0 and cfg.attention_dropout == 0.0
