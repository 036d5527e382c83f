"""The fake GPU (megatron/fake_gpu.py) and the step's device discipline on it.

Each check runs in its own process (tests/support/fake_gpu_checks.py): the fake GPU is
not undone once on. A host tensor reaching a GPU op or an NCCL collective raises there
as it does on a GPU, so these fail on code that hands the model host token ids, or a
collective a host tensor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(name: str) -> dict:
    proc = subprocess.run([sys.executable, "tests/support/fake_gpu_checks.py", name],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_host_tensors_into_gpu_ops_raise_as_on_a_gpu():
    out = _check("mix")
    assert out["weight_device"] == "meta" and out["is_cuda"] is True
    assert out["raised"] and "aten.embedding" in out["raised"]  # meta alone would compute it
    assert out["moved_ok"] == "meta"  # an explicit move is fine
    assert out["host_scalar_ok"] == "meta"  # as CUDA, 0-dim host scalars are allowed


def test_control_collectives_get_gpu_tensors():
    """The stop flag (every step), the DP token counts and metric sums (every train step
    with DP > 1), the pipeline owner flag (every refit/export with PP > 1): each made on
    the collective's device (on the old code each raised 'got host tensor')."""
    out = _check("collectives")
    for name in ("stop_poll", "global_counts", "reduce_metrics"):
        assert out[name] == "ok", out[name]
        assert out[name + "_collectives"] >= 1
    # The owner flag crossed its all-reduce on the GPU; the owner read back from a meta
    # tensor is a placeholder 0 ("no stage holds it"), which is as far as data-free goes.
    assert out["pp_owner_collectives"] == 1
    assert out["pp_owner"].startswith("KeyError"), out["pp_owner"]


def test_the_trainer_step_runs_on_the_fake_gpu():
    """learn_step of the tiny recipe at DP 2: forwards, rewards, scalarizer (batch
    normalisation sums over DP), the GRPO update with megatron's distributed optimizer,
    the Conductor's hooks; every host read named by its line."""
    out = _check("fake_step_tiny")
    assert out["dp"] == 2
    for stage in ("forward", "rewards", "scalarize", "train", "scalarizer_update"):
        assert stage in out["phases"]
    assert out["peak"] > 0
    places = {place.split("maestro_megatron/")[-1].split(":")[0] for place in out["host_reads"]}
    # Named host reads only (docs/gpu_path.md): metrics, the Conductor's sampling on the
    # host, the counts.
    assert places <= {"rewards/components.py", "megatron/conductor_replica.py",
                      "conductor/head.py", "scalarizers/conductor.py", "scalarizers/step.py",
                      "trainer/steps.py", "trainer/rollouts.py", "megatron/train_step.py",
                      "megatron/core/optimizer/clip_grads.py", "conductor/buffer.py",
                      "conductor/schedule.py"}, places  # (the last: the update's loss)
