"""Checkpoints: resume reproduces the uninterrupted run; saves are atomic.

The torchrun test (2 ranks, CPU/gloo) trains a GRPO + Conductor run for 4 steps with a
checkpoint after step 2, then loads that checkpoint in a fresh process group and trains
steps 3-4 again: losses, policy weights, the Conductor, its Adam state and the meta
buffer are bitwise equal (same layout, same ops). Layouts: TP=2 and DP=2 with the
distributed optimizer (``dp_reshardable``), PP=2 with megatron's non-distributed one.
The other tests exercise `latest` / pruning on plain directories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launch import run_torchrun

from maestro_megatron.errors import CheckpointError
from maestro_megatron.trainer.checkpoint import (
    LATEST,
    META,
    checkpoint_name,
    latest_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    resume_checkpoint,
)

HERE = Path(__file__).resolve().parent
LAYOUTS = ["2,1/dp_reshardable", "1,1/dp_reshardable", "1,2/local"]


@pytest.mark.distributed
def test_resume_reproduces_uninterrupted_run(tmp_path):
    root = tmp_path / "ckpt"
    for phase in ("full", "resume"):
        log = run_torchrun(HERE / "checkpoint_worker.py", 2,
                           ["--phase", phase, "--root", str(root), "--out",
                            str(tmp_path / phase), "--layouts", *LAYOUTS])
        # megatron's warning for a non-empty target directory: false on a normal save
        assert "Overwriting old incomplete" not in log
    for layout in LAYOUTS:
        spec = layout.split("/")[0].replace(",", "_")
        # The save that raised left `latest` on step 2 and no step_00000003 directory.
        assert (root / spec / LATEST).read_text().strip() == checkpoint_name(2)
        assert not (root / spec / checkpoint_name(3)).exists()
        for rank in range(2):
            full = torch.load(tmp_path / "full" / f"{spec}_rank{rank}.pt", weights_only=False)
            resumed = torch.load(tmp_path / "resume" / f"{spec}_rank{rank}.pt",
                                 weights_only=False)
            where = (layout, rank)
            assert len(full["metrics"]) == 2 and full["metrics"] == resumed["metrics"], where
            assert full["lr"] == resumed["lr"] and full["cursor"] == resumed["cursor"] == 4
            assert torch.equal(full["policy"], resumed["policy"]), where
            assert ("conductor" in full) == ("conductor" in resumed), where
            if "conductor" in full:
                assert "conductor/loss" in full["metrics"][-1], where  # an outer update ran
                for key in ("conductor", "conductor_adam"):
                    assert torch.equal(full[key], resumed[key]), (where, key)
                assert full["buffer"].keys() == resumed["buffer"].keys() != set()
                for key, value in full["buffer"].items():
                    assert torch.equal(value, resumed["buffer"][key]), (where, key)


def _fake_checkpoint(root: Path, step: int, *, complete: bool = True) -> Path:
    path = root / checkpoint_name(step)
    path.mkdir(parents=True)
    if complete:
        (path / META).write_text(json.dumps({"step": step}))
    return path


def test_latest_is_what_latest_names_never_an_older_one(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / f".tmp-{checkpoint_name(1)}").mkdir()  # a crashed first save
    assert resume_checkpoint(tmp_path) is None  # nothing to resume: a fresh start
    with pytest.raises(CheckpointError, match="no checkpoint at or under"):
        resolve_checkpoint(tmp_path)
    two = _fake_checkpoint(tmp_path, 2)
    ten = _fake_checkpoint(tmp_path, 10, complete=False)
    assert latest_checkpoint(tmp_path) == ten  # no `latest` file: the newest step_*, which
    with pytest.raises(CheckpointError, match=f"{ten}: has no manifest.json .*refusing to "
                       f"resume .*resume from {checkpoint_name(2)}"):
        resume_checkpoint(tmp_path)  # must verify: no silent step back to step_2
    four = _fake_checkpoint(tmp_path, 4)
    (tmp_path / LATEST).write_text(checkpoint_name(2) + "\n")
    assert latest_checkpoint(tmp_path) == two  # `latest` wins
    (tmp_path / LATEST).write_text(checkpoint_name(7))  # dangling: an error, not step 4
    with pytest.raises(CheckpointError, match=f"{LATEST} names {checkpoint_name(7)}, but "
                       f".*{checkpoint_name(7)} does not exist"):
        latest_checkpoint(tmp_path)
    assert resolve_checkpoint(four) == four and resolve_checkpoint(ten) == ten


def test_prune_keeps_newest_and_latest(tmp_path):
    paths = {s: _fake_checkpoint(tmp_path, s) for s in (1, 2, 3, 4)}
    (tmp_path / f".tmp-{checkpoint_name(3)}").mkdir()  # crashed save of an older step
    (tmp_path / f".tmp-{checkpoint_name(5)}").mkdir()  # newer than latest: maybe in flight
    (tmp_path / LATEST).write_text(checkpoint_name(1))
    removed = prune_checkpoints(tmp_path, keep=2)
    assert {p.name for p in removed} == {checkpoint_name(2), f".tmp-{checkpoint_name(3)}"}
    assert paths[1].exists() and paths[3].exists() and paths[4].exists()
    assert (tmp_path / f".tmp-{checkpoint_name(5)}").exists()
    with pytest.raises(ValueError, match="keep"):
        prune_checkpoints(tmp_path, keep=0)
