"""The vLLM part of bench/gpu_check.py: sleep / wake and refit of the rollout engine on
a GPU (sleep mode is GPU-only: on CPU `VLLMEngine` refuses it).

A random Llama (hidden 2048, 8 layers, bf16, ~0.9 GB with its 32000-row embedding and
head) with a freshly trained 512-token tokenizer. Checks: greedy tokens are the same
before a sleep and after the wake, and after a refit of the same weights; reports the
GPU memory a level-1 sleep frees, sleep and wake seconds, and the refit's GB/s against
a device-to-device copy and a host copy of the same bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import WORK


def engine_model(path: Path) -> Path:
    from bench.converter import build_checkpoint
    from maestro_megatron.data.prompts import builtin_texts
    from maestro_megatron.data.tokenizer import train_chat_tokenizer

    build_checkpoint(path, layers=8, hidden=2048, dtype="bfloat16")
    if not (path / "tokenizer_config.json").is_file():
        train_chat_tokenizer(builtin_texts(), path, vocab_size=512)
    return path


def _greedy(engine, prompts):
    from maestro_megatron.rollout import SamplingConfig

    groups = engine.generate(prompts, 1, SamplingConfig(temperature=1e-4, max_new_tokens=16,
                                                        seed=0))
    return [g.responses[0].token_ids for g in groups]


def _copy_seconds(named, device: str) -> float:
    import torch

    src = [t.to(device) for _, t in named]
    dst = [torch.empty_like(t) for t in src]
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for d, s in zip(dst, src):
        d.copy_(s)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def part_vllm(dry: bool) -> dict:
    if dry:
        return {"skipped": "dry run: vLLM sleep mode needs a GPU (the CPU engine and its "
                           "refit are tested by tests/integration/test_vllm_engine.py)"}
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vLLM not installed"}
    from safetensors.torch import load_file

    from maestro_megatron.rollout import VLLMEngine
    from maestro_megatron.rollout.refit import refit_engine

    path = engine_model(WORK / "gpu" / "llama_h2048_l8")
    named = [(k, v) for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()]
    size = sum(t.numel() * t.element_size() for _, t in named)
    prompts = ["What is 2 + 3?", "Write one sentence about the sea."]
    engine = VLLMEngine(str(path), seed=0, max_model_len=512, enable_sleep_mode=True,
                        gpu_memory_utilization=0.3, enforce_eager=True)
    try:
        import torch

        before = _greedy(engine, prompts)
        free0 = torch.cuda.mem_get_info()[0]
        start = time.perf_counter()
        engine.sleep(level=1)
        sleep_s = time.perf_counter() - start
        freed = torch.cuda.mem_get_info()[0] - free0
        start = time.perf_counter()
        engine.wake_up()
        wake_s = time.perf_counter() - start
        after_wake = _greedy(engine, prompts)
        refit_engine(engine, iter(named), 256 * 2**20)  # first: one-off costs
        stats = refit_engine(engine, iter(named), 256 * 2**20)
        after_refit = _greedy(engine, prompts)
    finally:
        engine.close()
    d2d, h2h = _copy_seconds(named, "cuda"), _copy_seconds(named, "cpu")
    return {"bytes": size, "sleep_s": sleep_s, "wake_s": wake_s, "sleep_freed_bytes": freed,
            "same_tokens_after_wake": before == after_wake,
            "same_tokens_after_refit": before == after_refit,
            "refit_s": stats.seconds, "refit_gb_per_s": size / stats.seconds / 1e9,
            "device_copy_s": d2d, "host_copy_s": h2h,
            "refit_over_host_copy": stats.seconds / h2h}
