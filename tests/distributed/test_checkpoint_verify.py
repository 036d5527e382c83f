"""Checkpoints are verified against their manifest before anything is read from them.

One torchrun run (2 ranks, DP=2 with the distributed optimizer: each rank writes its own
shards) saves real megatron-core checkpoints after steps 1 and 2. The test copies them,
damages each copy one way (16 flipped bytes inside an optimizer tensor, a truncated shard,
no manifest, a stray file, a `latest` naming no directory) and resumes from every copy in
one fresh 2-rank run: each damage is a CheckpointError naming the file, the same on both
ranks; with fallback the run resumes from step 1, bit-exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from launch import run_torchrun

from maestro_megatron.trainer.checkpoint import LATEST, MANIFEST, checkpoint_name

HERE = Path(__file__).resolve().parent
WORKER = HERE / "checkpoint_faults_worker.py"
STEP2 = checkpoint_name(2)
pytestmark = pytest.mark.distributed


def _flip_optimizer_bytes(ckpt: Path) -> str:
    """Flip 16 bytes in the middle of an Adam exp_avg_sq entry; returns its file."""
    from torch.distributed.checkpoint import FileSystemReader

    storage = FileSystemReader(str(ckpt)).read_metadata().storage_data
    index, info = next((i, s) for i, s in storage.items() if i.fqn.endswith(".exp_avg_sq"))
    path = ckpt / info.relative_path
    data = bytearray(path.read_bytes())
    at = info.offset + info.length // 2
    data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
    path.write_bytes(bytes(data))
    return info.relative_path


def _damage(root: Path, case: str) -> str:
    """Damage the copy `root` as `case` says; returns the file the error must name."""
    step2 = root / STEP2
    if case in ("flipped", "flipped_fallback"):
        return _flip_optimizer_bytes(step2)
    if case == "truncated":  # rank 1's shard: the rank that hashes it is not the leader
        shard = step2 / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        return shard.name
    if case == "no_manifest":
        (step2 / MANIFEST).unlink()
        return MANIFEST
    if case == "extra_file":
        (step2 / "rng" / "notes.txt").write_text("added later\n")
        return "rng/notes.txt"
    if case == "dangling":
        (root / LATEST).write_text(checkpoint_name(3) + "\n")
        return LATEST
    assert case == "clean"
    return ""


CASES = ["clean", "flipped", "truncated", "no_manifest", "extra_file", "dangling",
         "flipped_fallback"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    run_torchrun(WORKER, 2, ["--phase", "save", "--out", str(base / "saved"),
                             str(base / "ckpt")])
    named, roots = {}, []
    for case in CASES:
        root = base / "cases" / case
        shutil.copytree(base / "ckpt", root)
        named[case] = _damage(root, case)
        roots.append(root)
    log = run_torchrun(WORKER, 2, ["--phase", "load", "--out", str(base / "loaded"),
                                   *map(str, roots), "--unverified",
                                   str(base / "cases" / "flipped")])
    results = [json.loads((base / "loaded" / f"results_rank{r}.json").read_text())
               for r in range(2)]
    return base, named, results, log


def test_manifest_lists_every_file_with_size_and_sha256(outcome):
    base, *_ = outcome
    for step in (1, 2):
        ckpt = base / "ckpt" / checkpoint_name(step)
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
        on_disk = {p.relative_to(ckpt).as_posix(): p for p in ckpt.rglob("*")
                   if p.is_file() and p.name != MANIFEST}
        assert sorted(files) == sorted(on_disk) and ".metadata" in files
        for name, path in on_disk.items():
            assert files[name] == {"size": path.stat().st_size,
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_all_ranks_reach_the_same_verdict(outcome):
    _, _, (rank0, rank1), _ = outcome
    assert rank0 == rank1
    assert sorted(rank0) == sorted([*CASES, "unverified"])


def test_intact_checkpoint_resumes_bit_exactly(outcome):
    base, _, (results, _), _ = outcome
    assert results["clean"]["step"] == 2
    for rank in range(2):
        assert torch.equal(torch.load(base / "loaded" / f"clean_rank{rank}.pt"),
                           torch.load(base / "saved" / f"policy2_rank{rank}.pt"))


def test_flipped_bytes_load_silently_without_the_manifest(outcome):
    """Why the manifest exists: megatron-core reads the damaged optimizer state happily."""
    _, _, (results, _), _ = outcome
    assert results["unverified"]["step"] == 2


@pytest.mark.parametrize("case, says", [
    ("flipped", r"has sha256 [0-9a-f]{12}\.\. but the manifest says [0-9a-f]{12}\.\. "
                r"\(corrupted\)"),
    ("truncated", r"is \d+ bytes but the manifest says \d+ \(truncated or overwritten\)"),
    ("no_manifest", r"has no manifest\.json \(an incomplete save or copy"),
    ("extra_file", r"is not in the manifest \(added after the save\)"),
])
def test_damaged_checkpoint_is_refused_naming_the_file(outcome, case, says):
    base, named, (results, _), _ = outcome
    got = results[case]
    assert got["error"] == "CheckpointError", got
    ckpt = base / "cases" / case / STEP2
    head = f"checkpoint {ckpt}: " + ("" if case == "no_manifest" else named[case] + " ")
    assert got["message"].startswith(head), got["message"]
    assert re.search(says, got["message"]), got["message"]
    assert got["message"].endswith(
        "; refusing to resume (set run.resume_fallback=true to resume from "
        f"{checkpoint_name(1)}, or the newest earlier checkpoint that verifies)")


def test_latest_naming_a_missing_directory_is_refused(outcome):
    base, _, (results, _), _ = outcome
    root = base / "cases" / "dangling"
    assert results["dangling"] == {
        "error": "CheckpointError",
        "message": f"{root / LATEST} names {checkpoint_name(3)}, but "
                   f"{root / checkpoint_name(3)} does not exist; refusing to resume (set "
                   f"run.resume_fallback=true to resume from {STEP2}, or the newest earlier "
                   "checkpoint that verifies)"}


def test_fallback_resumes_from_the_previous_checkpoint(outcome):
    base, named, (results, _), log = outcome
    root = base / "cases" / "flipped_fallback"
    assert results["flipped_fallback"] == {"step": 1, "path": str(root / checkpoint_name(1))}
    for rank in range(2):
        assert torch.equal(torch.load(base / "loaded" / f"flipped_fallback_rank{rank}.pt"),
                           torch.load(base / "saved" / f"policy1_rank{rank}.pt"))
    warnings = [line for line in log.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, warnings  # rank 0 only
    assert warnings[0].startswith(f"warning: checkpoint {root / STEP2}: "
                                  f"{named['flipped_fallback']} has sha256 "), warnings
    assert warnings[0].endswith(f"(corrupted); resuming from {root / checkpoint_name(1)} "
                                "instead (run.resume_fallback=true)"), warnings
