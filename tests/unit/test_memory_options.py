"""memory: recompute and grad-buffer options -> megatron's configs (one process, no
distributed state; the numerics are in tests/distributed/test_memory.py)."""

from __future__ import annotations

import pytest
import torch

from maestro_megatron.config.schema import (
    MemoryConfig,
    ModelConfig,
    ParallelConfig,
    PrecisionConfig,
)
from maestro_megatron.megatron.model import recompute_fields

MODEL = ModelConfig(num_layers=8, num_attention_heads=4, num_query_groups=2)


def test_recompute_fields_map_each_setting():
    assert recompute_fields(MemoryConfig(), MODEL, ParallelConfig()) == {}
    assert recompute_fields(MemoryConfig(recompute="selective", recompute_num_layers=4),
                            MODEL, ParallelConfig()) == {
        "recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    assert recompute_fields(MemoryConfig(recompute="full", recompute_num_layers=2), MODEL,
                            ParallelConfig(pipeline_parallel=2)) == {
        "recompute_granularity": "full", "recompute_method": "uniform",
        "recompute_num_layers": 2}


@pytest.mark.parametrize(("layers", "parallel", "per_chunk"), [
    (3, ParallelConfig(), 8),
    (4, ParallelConfig(pipeline_parallel=2, virtual_pipeline_parallel=2), 2),
])
def test_full_recompute_groups_must_tile_each_chunk(layers, parallel, per_chunk):
    with pytest.raises(ValueError, match=f"memory.recompute_num_layers={layers} must divide "
                                         f"the {per_chunk} layers of each model chunk"):
        recompute_fields(MemoryConfig(recompute="full", recompute_num_layers=layers), MODEL,
                         parallel)


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_transformer_config_takes_the_recompute_setting(recompute):
    pytest.importorskip("megatron.core")
    if torch.cuda.is_available():
        pytest.skip("checks the CPU (local spec) configuration")
    from maestro_megatron.megatron.model import build_transformer_config

    memory = MemoryConfig(recompute=recompute, recompute_num_layers=4)
    cfg = build_transformer_config(MODEL, ParallelConfig(), PrecisionConfig(), memory)
    # megatron validated it (selective: no layer count; full: a method and a count).
    assert cfg.recompute_granularity == (None if recompute == "none" else recompute)
    assert cfg.recompute_method == ("uniform" if recompute == "full" else None)
    assert cfg.recompute_num_layers == (4 if recompute == "full" else None)
    assert cfg.recompute_modules == ["core_attn"]  # ours; also megatron's default
    default = build_transformer_config(MODEL, ParallelConfig(), PrecisionConfig())
    assert default.recompute_granularity is None


@pytest.mark.parametrize(("fp32", "overlap", "distributed"),
                         [(True, False, True), (False, True, True), (False, False, False)])
def test_ddp_config_follows_the_recipe(fp32, overlap, distributed):
    pytest.importorskip("megatron.core")
    from maestro_megatron.megatron.model import build_ddp_config

    ddp = build_ddp_config(ParallelConfig(use_distributed_optimizer=distributed),
                           MemoryConfig(grad_reduce_in_fp32=fp32, overlap_grad_reduce=overlap))
    assert ddp.grad_reduce_in_fp32 is fp32
    assert ddp.overlap_grad_reduce is overlap
    assert ddp.use_distributed_optimizer is distributed
