"""slurm/train.sbatch on a real SLURM cluster: one machine, two emulated nodes
(slurm/local_cluster.sh; .ci/run installs Debian's slurm-wlm and munge and starts it).

The tiny recipe runs across both nodes with DP=2 and one vLLM engine per replica, to
completion; the same run stopped mid-way by SLURM's advance signal checkpoints,
requeues itself, resumes and ends with metrics and weights equal to the uninterrupted
run's, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("MAESTRO_SLURM_DIR", "/tmp/maestro-slurm"))
CONF = STATE / "slurm.conf"
ARGS = ["recipes/tiny_cpu.yaml", "warmup.num_steps=5", "run.num_steps=4", "run.progress=false",
        "rollout.placement=replica"]

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(
    shutil.which("sbatch") is None or not CONF.is_file(),
    reason="no local SLURM cluster (bash slurm/local_cluster.sh start 2)")]


def _env() -> dict:
    return dict(os.environ, SLURM_CONF=str(CONF), MAESTRO_PYTHON=str(ROOT / ".venv/bin/python"),
                MAESTRO_NPROC_PER_NODE="1", OMP_NUM_THREADS="1")


def _slurm(*cmd: str) -> str:
    return subprocess.run(list(cmd), env=_env(), capture_output=True, text=True,
                          check=True).stdout


def _submit(run_dir: Path, *extra: str) -> int:
    out = _slurm("sbatch", "--parsable", "--nodes=2", f"--output={run_dir}.out",
                 "slurm/train.sbatch", *ARGS, f"run.output_dir={run_dir}", *extra)
    return int(out.strip().split(";")[0])


def _state(job: int) -> str:
    info = _slurm("scontrol", "show", "job", str(job))
    return info.split("JobState=")[1].split()[0]


def _wait_done(job: int, timeout: float = 1500) -> str:
    deadline = time.monotonic() + timeout
    hurried = set()
    while True:  # bounded polling of the scheduler's own state
        info = _slurm("scontrol", "show", "job", str(job))
        state = info.split("JobState=")[1].split()[0]
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return state
        restarts = info.split("Restarts=")[1].split()[0]
        if state == "PENDING" and "Reason=BeginTime" in info and restarts != "0" \
                and restarts not in hurried:
            # SLURM holds a requeued job for ~2 minutes; start it sooner (test time
            # only), once, and not within the second its old credential was revoked:
            # slurmd refuses a credential created in that second ("Job credential
            # revoked", and the job ends FAILED).
            _slurm("scontrol", "update", f"JobId={job}", "StartTime=now+5")
            hurried.add(restarts)
        assert time.monotonic() < deadline, f"job {job} still {state} after {timeout} s"
        time.sleep(2)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def _cwd():
    os.chdir(ROOT)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("slurm") / "whole"
    job = _submit(run_dir)
    state = _wait_done(job)
    log = (run_dir / "slurm" / f"job-{job}" / "job.log").read_text()
    assert state == "COMPLETED", log + Path(f"{run_dir}.out").read_text()[-3000:]
    return run_dir, job, log


def test_tiny_recipe_across_two_nodes_with_two_engines(uninterrupted):
    run_dir, job, log = uninterrupted
    assert "2 node(s) x 1 process(es)" in log and "run finished" in log
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3, 4]
    assert (run_dir / "FINISHED").is_file() and (run_dir / "hf_final" / "config.json").is_file()
    nodes = sorted(p.name for p in (run_dir / "slurm" / f"job-{job}").glob("restart-0-node-*"))
    assert nodes == ["restart-0-node-0.log", "restart-0-node-1.log"]
    rows = _metrics(run_dir)
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in rows)  # both engines refit


def test_preempted_job_checkpoints_requeues_and_matches_the_uninterrupted_run(
        uninterrupted, tmp_path):
    whole, _, _ = uninterrupted
    run_dir = tmp_path / "preempted"
    job = _submit(run_dir)
    deadline = time.monotonic() + 1200
    while not (run_dir / "metrics.jsonl").is_file() or len(_metrics(run_dir)) < 2:
        assert time.monotonic() < deadline and _state(job) in ("PENDING", "RUNNING")
        time.sleep(1)
    _slurm("scancel", "--signal=USR1", "--batch", str(job))  # SLURM's advance warning
    state = _wait_done(job)
    log = (run_dir / "slurm" / f"job-{job}" / "job.log").read_text()
    assert state == "COMPLETED", log
    assert "requeueing" in log and "restart 1]" in log and "run finished" in log, log
    restarts = (run_dir / "slurm" / f"job-{job}" / "restart-0-node-0.log").read_text()
    assert "stopped after step" in restarts or "stopped after step" in (
        run_dir / "slurm" / f"job-{job}" / "restart-0-node-1.log").read_text()

    def numbers(rows):
        return [{k: v for k, v in r.items() if not k.startswith("timing/") and k != "time"}
                for r in rows]

    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3, 4]
    assert numbers(_metrics(run_dir)) == numbers(_metrics(whole))
    from safetensors.torch import load_file

    a = load_file(run_dir / "hf_final" / "model.safetensors")
    b = load_file(whole / "hf_final" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)



def test_chained_jobs_finish_a_run_longer_than_the_time_limit(tmp_path):
    """`submit.sh --chain 3` with a five-minute limit and the advance signal 265 s before
    it (SLURM checks limits every 30 s: it comes 5-35 s into each job, before a job has
    started up and trained its first step; the limit itself leaves a slow machine
    room to finish that step): job 1 stops after step 1 with its
    checkpoint, job 2 resumes and trains step 2, the last (a stop is never asked after
    the last step), so the run finishes; job 3 finds it finished and exits at once."""
    run_dir = tmp_path / "chained"
    out = subprocess.run(
        ["bash", "slurm/submit.sh", "--chain", "3", "--nodes=1", "--time=5",
         "--signal=B:USR1@265", f"--output={run_dir}-%j.out", "--",
         *ARGS, "run.num_steps=2", f"run.output_dir={run_dir}"],
        env=_env(), capture_output=True, text=True, check=True).stdout
    jobs = [int(line.split(";")[0]) for line in out.split()]
    assert len(jobs) == 3, out
    states = [_wait_done(job) for job in jobs]
    logs = [(run_dir / "slurm" / f"job-{job}" / "job.log").read_text() for job in jobs]
    assert states == ["COMPLETED"] * 3, logs
    first = (run_dir / "slurm" / f"job-{jobs[0]}" / "restart-0-node-0.log").read_text()
    assert "stopped after step 1" in first, logs[0] + first[-3000:]
    assert "the next job of the chain continues" in logs[0], logs[0]
    assert "run finished" in logs[1], logs[1]
    assert "already finished; nothing to do" in logs[2], logs[2]
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2]
    assert (run_dir / "FINISHED").read_text().strip() == "2"
    assert (run_dir / "hf_final" / "model.safetensors").is_file()
