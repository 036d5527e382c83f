"""GPU only: a real vLLM engine with sleep mode on a tiny Llama, colocated with a
megatron-core trainer in this process.

1. Sleep level 1 frees the engine's memory (torch.cuda.mem_get_info), waking "weights"
   then "kv_cache" takes it back, and the engine samples exactly as before.
2. The trainer's step order at sleep level 2: sleep, an optimizer step, wake
   "weights", `refit_policy` (the training loop's one refit entry point) by CUDA IPC
   (no safetensors bytes, no host copy), wake "kv_cache": the engine's log-probs equal
   the trainer's new ones, and the trainer's refit buffer is freed.
Skipped without CUDA or vLLM (tests/unit/test_colocation.py and
tests/integration/test_step_order.py run on CPU).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.support.tiny_llama import build_tiny_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm"),
]

UTILIZATION = 0.2
TOL = 2e-3
"""fp32 engine vs fp32 megatron on GPU (TF32 and kernel order differ from CPU)."""
PROMPTS = ["the quick brown fox", "question: what is"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), seed=0, hidden_size=128,
                            num_kv_heads=2)


@pytest.fixture(scope="module")
def engine(model_dir):
    from maestro_megatron.rollout import VLLMEngine

    # started before the trainer's CUDA tensors: vLLM sizes its share from free memory
    eng = VLLMEngine(str(model_dir), seed=0, max_model_len=256,
                     gpu_memory_utilization=UTILIZATION, enable_sleep_mode=True)
    yield eng
    eng.close()


def _free() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def _sample(engine):
    from maestro_megatron.rollout import SamplingConfig

    groups = engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=16, seed=7))
    return [r.token_ids for g in groups for r in g.responses]


def test_sleep_frees_the_engines_memory_and_wake_restores_it(engine):
    assert engine.supports_sleep and engine.refit_transport == "cuda_ipc"
    before = _sample(engine)
    free_awake = _free()
    assert engine.sleep(1) is True
    freed = _free() - free_awake
    total = torch.cuda.mem_get_info()[1]
    # the KV cache (most of the engine's share) and the weights left the GPU
    assert freed > 0.5 * UTILIZATION * total, (freed, total)
    with pytest.raises(RuntimeError, match="sleeping engine"):
        _sample(engine)  # a generate on freed memory is refused, not served
    assert engine.wake_up(["weights"]) is True
    with pytest.raises(RuntimeError, match="kv_cache asleep"):
        _sample(engine)
    weights_back = free_awake + freed - _free()
    assert 0 <= weights_back < 0.1 * freed  # the tiny model's weights, not the KV cache
    assert engine.wake_up(["kv_cache"]) is True
    assert abs(_free() - free_awake) < 0.05 * freed
    assert engine.wake_up() is False  # awake: nothing to restore
    assert _sample(engine) == before  # level 1 kept the weights (host copy)


@pytest.fixture(scope="module")
def trainer(model_dir):
    from maestro_megatron.config.schema import ParallelConfig, PrecisionConfig
    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.weights.hf_model import hf_model_config, load_hf_weights

    cfg, _ = hf_model_config(model_dir)
    parallel = ParallelConfig()
    groups = init_distributed(parallel, cfg, seed=0)
    chunks = build_model(cfg, parallel, PrecisionConfig(), pp_rank=groups.pp_rank,
                         pp_size=groups.pp_size, wrap_ddp=True)
    load_hf_weights(chunks, model_dir, cfg, groups)
    yield cfg, parallel, groups, chunks
    destroy_distributed()


def _sequences(model_dir):
    from transformers import AutoTokenizer

    from tests.support.fixed_sequences import fixed_sequences

    ids, prompt_lens, batch = fixed_sequences(AutoTokenizer.from_pretrained(model_dir))
    return ids, prompt_lens, batch.to("cuda")


def test_level2_sleep_then_refit_policy_by_cuda_ipc(engine, trainer, model_dir, monkeypatch):
    from maestro_megatron.config.schema import GRPOConfig, PrecisionConfig
    from maestro_megatron.megatron.forward import forward_logprobs
    from maestro_megatron.megatron.train_step import (
        build_optimizer,
        global_counts,
        optimizer_step,
        sft_loss_fn,
    )
    from maestro_megatron.rollout import base, refit_policy

    cfg, parallel, groups, chunks = trainer
    ids, prompt_lens, batch = _sequences(model_dir)
    kw = dict(micro_batch_size=1, vocab_size=cfg.vocab_size)

    def trainer_logprobs():
        out = forward_logprobs(chunks, batch, groups, **kw)
        return [out.logprobs[i, p:len(x)].float().cpu()
                for i, (x, p) in enumerate(zip(ids, prompt_lens))]

    def gap(a, b):
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    before = trainer_logprobs()
    assert gap(before, engine.score_sequences(ids, prompt_lens)) < TOL

    free_awake = _free()
    assert engine.sleep(2) is True  # generate -> sleep
    assert _free() - free_awake > 0.5 * UTILIZATION * torch.cuda.mem_get_info()[1]
    optimizer, scheduler = build_optimizer(GRPOConfig(lr=0.05, clip_grad=0.0), parallel,
                                           PrecisionConfig(), chunks, 1)
    optimizer_step(chunks, optimizer, scheduler, batch, groups,  # -> train
                   loss_fn=sft_loss_fn(global_counts(batch.response_mask, groups)), **kw)
    after = trainer_logprobs()
    assert gap(after, before) > 0.1  # the step really changed the policy

    def no_bytes(bucket):
        raise AssertionError("a GPU engine's refit went through safetensors bytes")

    monkeypatch.setattr(base, "serialize_bucket", no_bytes)
    assert engine.wake_up(["weights"]) is True  # -> wake (weights)
    allocated = torch.cuda.memory_allocated()
    metrics = refit_policy(engine, chunks, cfg, groups, 64 * 1024)  # -> refit
    assert metrics["refit/num_buckets"] > 1  # 64 KiB bound: the buffer is reused
    assert engine._ipc_buffer is None
    torch.cuda.ipc_collect()
    assert torch.cuda.memory_allocated() == allocated  # the IPC buffer was freed
    assert engine.wake_up(["kv_cache"]) is True  # -> wake (KV cache)

    engine_after = engine.score_sequences(ids, prompt_lens)
    assert gap(after, engine_after) < TOL  # level 2 discarded the weights: all refit
    assert gap(before, engine_after) > 0.1
