"""bench/gpu_check.sh --dry-run: the one-shot GPU check's every part on CPU with tiny
shapes and fp32 (matmul peak, megatron-core train steps with the FLOP count, tests/gpu
collected, the vLLM part skipped, `maestro train recipes/gpu_check.yaml` for 2 steps),
one results file and one table. The GPU path itself is the same
code with Llama-3-8B layer shapes and bf16 / FP8; it needs a GPU to run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_writes_one_results_file(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["dry_run"] is True
    assert res["matmul"]["tflops"] > 0
    train = res["train_fp32"]
    assert train["tokens_per_s"] > 0 and train["layers"] == 2 and train["seq"] == 32
    assert 0 < train["fraction_of_matmul_peak"] < 10  # tiny shapes: noise, not a figure
    assert "collected" in res["gpu_tests"]["summary"]
    assert "skipped" in res["vllm"]
    recipe = res["recipe_fp32"]
    assert "error" not in recipe, recipe
    assert recipe["steps"] == 2 and recipe["step_s"] > 0 and recipe["refit_bytes"] > 0
    assert recipe["logprob_gap_max"] < 1e-3  # the engine samples from the trained weights
    assert recipe["engine_sleep_s"] is None  # vLLM on CPU has no sleep mode
    assert "| recipe_fp32 | step_s " in proc.stdout
    assert "results:" in proc.stdout


def test_flop_count_of_a_llama3_8b_layer():
    """Hand count: h=4096, kv=1024, f=14336, seq 4096: QKV 2h(h+2kv)=50.3M, out 2h^2=33.6M,
    MLP 2h*2f + 2fh = 352.3M, attention 4*seq*h = 67.1M -> 503.3M per layer-token
    forward; head 2*h*V = 1050.7M; training = 3x forward."""
    from bench.gpu_parts import LLAMA3_8B, train_flops_per_token

    per_layer = 2 * 4096 * (4096 + 2048) + 2 * 4096**2 + 6 * 4096 * 14336 + 4 * 4096 * 4096
    head = 2 * 4096 * 128256
    assert train_flops_per_token(LLAMA3_8B, 1, 4096) == 3 * (per_layer + head)
    assert train_flops_per_token(LLAMA3_8B, 4, 4096) == 3 * (4 * per_layer + head)
