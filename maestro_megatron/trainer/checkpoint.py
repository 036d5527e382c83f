"""Atomic, resumable training checkpoints (DESIGN.md section 6).

One checkpoint directory ``<ckpt_root>/step_00000042/`` holds

- the policy and its (distributed) optimizer state as one megatron-core ``torch_dist``
  checkpoint (every rank writes its shards; ``model0``, ``model1``, ... are the VPP
  chunks, ``optimizer`` the optimizer's sharded state),
- ``scalarizer/dp_00000.pt``: per data-parallel rank, the scalarizer's `state_dict()`
  (for the Conductor: weights + config, its Adam state and that rank's meta buffer of
  (h, a, A) triples), written by the last-stage TP-rank-0 replica,
- ``rng/rank_00000.pt``: each rank's RNG states (python, numpy, torch CPU, CUDA, the
  megatron model-parallel RNG tracker, and any caller-owned ``torch.Generator``),
- ``meta.json`` (by the leader): step, the caller's ``extra`` (data cursor, ...), the LR
  scheduler's state and the layout,
- ``manifest.json`` (written last, by the leader): every other file's relative path, size
  and sha256 (the ranks hash their own shards after the barrier, in chunks).

Atomicity: every rank writes into ``<ckpt_root>/.tmp-step_00000042``; after a barrier the
leader (global rank 0) renames it to ``step_00000042`` and then atomically replaces the
``latest`` file (write tmp + ``os.replace``). A crash at any point leaves ``latest``
naming the previous complete checkpoint and no partial directory named ``step_*``.

Trust: nothing is read from a checkpoint before its manifest verifies (`verify_checkpoint`,
on every rank, one verdict): a missing manifest, a missing or extra file, a size or a
checksum mismatch is a `CheckpointError` naming the file. `resume_checkpoint` picks what a
run resumes from: what ``latest`` names (a ``latest`` naming no directory is an error,
never a fresh start), else the newest ``step_*``; with ``fallback`` the newest earlier one
that verifies. No ``latest`` and no ``step_*``: a fresh start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from maestro_megatron.errors import CheckpointError
from maestro_megatron.megatron.model import unwrap_model
from maestro_megatron.megatron.optimizer import ensure_optimizer_state, restore_adam_steps
from maestro_megatron.megatron.parallel import ParallelGroups
from maestro_megatron.trainer.faults import fault_point
from maestro_megatron.trainer.outputs import atomic_write_text

LATEST = "latest"
META = "meta.json"
MANIFEST = "manifest.json"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"
FORMAT = "maestro-ckpt-v1"
DEFAULT_SHARDING = "dp_reshardable"
"""Distributed-optimizer state layout (megatron-LM's default): each rank writes its own
buffer shards in parallel; resumable under another DP size, not another TP/PP layout.
"fully_reshardable" gathers the state on DP rank 0 and resumes under any layout.
megatron-core 0.16.1's own default, "fully_sharded_model_space", fails on save
("ShardedTensor.flattened_range is not supported")."""
_NAME = re.compile(rf"^{PREFIX}(\d+)$")
_RANK_FILE = re.compile(r"(?:^|/)(?:__|rank_)(\d+)(?:_\d+\.distcp|\.pt)$")
"""A file one rank wrote (torch_dist ``__<rank>_<i>.distcp``, ``rng/rank_<rank>.pt``)."""
_log = logging.getLogger(__name__)


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint after `step` policy steps."""
    return f"{PREFIX}{step:08d}"


# ---------------------------------------------------------------- megatron state
def _model_sharded_state(model_chunks, groups: ParallelGroups) -> dict:
    metadata = {"dp_cp_group": groups.dp_cp}
    return {f"model{i}": unwrap_model(chunk).sharded_state_dict(metadata=metadata)
            for i, chunk in enumerate(model_chunks)}


def _sharded_state(model_chunks, optimizer, groups: ParallelGroups, *, is_loading: bool,
                   sharding_type: str) -> dict:
    """{"model<i>": chunk sharded state, "optimizer": optimizer sharded state}."""
    state = _model_sharded_state(model_chunks, groups)
    if optimizer is not None:
        if is_loading:
            ensure_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            state, is_loading=is_loading,
            metadata={"distrib_optim_sharding_type": sharding_type})
    return state


# ---------------------------------------------------------------- RNG
def _rng_state(generators: dict[str, torch.Generator] | None) -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states(),
             "generators": {k: g.get_state() for k, g in (generators or {}).items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None
                   ) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    for key, gen in (generators or {}).items():
        if key not in state["generators"]:
            raise KeyError(f"checkpoint has no RNG state for generator {key!r}")
        gen.set_state(state["generators"][key])


# ---------------------------------------------------------------- scalarizer
SCALARIZER_DIR = "scalarizer"


def _writes_scalarizer(groups: ParallelGroups, scalarizer) -> bool:
    """One writer per DP rank: the last-stage, TP-rank-0, CP-rank-0 replica."""
    return (scalarizer is not None and groups.is_last_stage and groups.tp_rank == 0
            and groups.cp_rank == 0)


def _load_scalarizer(ckpt: Path, meta: dict, groups: ParallelGroups, scalarizer) -> None:
    """This DP rank's scalarizer state; under a new DP size the scalarizer re-splits the
    saved per-rank states itself (`Scalarizer.reshard_states`)."""
    saved_dp = meta["layout"]["dp_size"]
    folder = ckpt / SCALARIZER_DIR
    files = [folder / f"dp_{r:05d}.pt" for r in range(saved_dp)]
    if not files[0].is_file():
        raise FileNotFoundError(f"{ckpt}: holds no scalarizer state ({files[0]} is missing)")
    mine = [groups.dp_rank] if saved_dp == groups.dp_size else range(saved_dp)
    blobs = [torch.load(files[r], weights_only=False) for r in mine]
    if blobs[0]["name"] != scalarizer.name:
        raise ValueError(f"scalarizer.name: checkpoint {ckpt} was written by "
                         f"{blobs[0]['name']!r}, this run uses {scalarizer.name!r}")
    states = [b["state"] for b in blobs]
    if saved_dp == groups.dp_size:
        scalarizer.load_state_dict(states[0])
        return
    scalarizer.load_state_dict(type(scalarizer).reshard_states(states, groups.dp_rank,
                                                               groups.dp_size))


# ---------------------------------------------------------------- manifest
def _sha256(path: Path) -> str:
    with open(path, "rb") as f:  # streamed in chunks: shards can be GBs
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listing(ckpt: Path) -> dict[str, int]:
    """{path relative to `ckpt`: size} of every file but the manifest, sorted."""
    files = {p.relative_to(ckpt).as_posix(): p.stat().st_size
             for p in ckpt.rglob("*") if p.is_file()}
    files.pop(MANIFEST, None)
    return dict(sorted(files.items()))


def _my_share(names: list[str], rank: int, world: int) -> list[str]:
    """The files this rank hashes: those it wrote (named by rank), the rest round-robin."""
    def owner(i: int, name: str) -> int:
        match = _RANK_FILE.search(name)
        return (int(match.group(1)) if match else i) % world
    return [n for i, n in enumerate(names) if owner(i, n) == rank]


def _all_gather(obj) -> list:
    """`obj` from every rank (just [obj] without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _rank_world() -> tuple[int, int]:
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _hash_files(ckpt: Path, names: list[str]) -> dict[str, str]:
    """{name: sha256} of `names`, each hashed by one rank; collective (one all_gather)."""
    rank, world = _rank_world()
    digests: dict[str, str] = {}
    for part in _all_gather({n: _sha256(ckpt / n) for n in _my_share(names, rank, world)}):
        digests.update(part)
    return digests


def _write_manifest(ckpt: Path, digests: dict[str, str]) -> None:
    """Leader, last file of a save: every file's size and sha256 (`digests`: those the
    ranks already hashed; the rest, e.g. meta.json, are hashed here)."""
    files = {name: {"size": size, "sha256": digests.get(name) or _sha256(ckpt / name)}
             for name, size in _listing(ckpt).items()}
    atomic_write_text(ckpt / MANIFEST, json.dumps({"format": FORMAT, "files": files},
                                                  indent=1))


def _problems(ckpt: Path) -> list[tuple[int, str]]:
    """(order, what is wrong) for `ckpt`; collective: every rank calls it once and gets
    the same list (files are hashed once, spread over the ranks)."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files = {name: (int(entry["size"]), str(entry["sha256"]))
                 for name, entry in manifest["files"].items()}
    except FileNotFoundError:
        found = [(-1, f"has no {MANIFEST} (an incomplete save or copy, or saved before "
                      "checkpoints carried manifests)")]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        found = [(-1, f"{MANIFEST} is unreadable ({type(exc).__name__}: {exc}) (corrupted)")]
    else:
        on_disk = _listing(ckpt)
        found = []
        for i, (name, (size, _)) in enumerate(files.items()):
            if name not in on_disk:
                found.append((i, f"{name} is missing (the manifest lists it)"))
            elif on_disk[name] != size:
                found.append((i, f"{name} is {on_disk[name]} bytes but the manifest says "
                                 f"{size} (truncated or overwritten)"))
        found += [(len(files), f"{name} is not in the manifest (added after the save)")
                  for name in on_disk if name not in files]
    if found:  # a verdict without reading a shard; still the hashing branch's collective
        _hash_files(ckpt, [])
        return found
    got = _hash_files(ckpt, list(files))
    for i, (name, (_, want)) in enumerate(files.items()):
        if name not in got:  # a rank that saw other files hashed nothing
            found.append((i, f"{name} was not hashed (the ranks see different files)"))
        elif got[name] != want:
            found.append((i, f"{name} has sha256 {got[name][:12]}.. but the manifest says "
                             f"{want[:12]}.. (corrupted)"))
    return found


def checkpoint_problem(ckpt: Path) -> str | None:
    """What makes `ckpt` untrustworthy (the first problem, named by file), or None when
    every file matches its manifest. Collective when torch.distributed is initialised:
    every rank calls it and gets the same answer."""
    found = sorted(set(_problems(Path(ckpt))))
    # (a rank whose view of the files differs would return another list: agree on rank 0's)
    found = _broadcast(found)
    if not found:
        return None
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return found[0][1] + more


def verify_checkpoint(ckpt: Path) -> None:
    """Raise `CheckpointError` unless every file of `ckpt` matches its manifest; read
    nothing from a checkpoint before this. Collective (see `checkpoint_problem`)."""
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        raise CheckpointError(f"checkpoint {ckpt}: {problem}")


# ---------------------------------------------------------------- public API
def save_checkpoint(ckpt_root: Path, step: int, *, model_chunks, optimizer, scheduler,
                    groups: ParallelGroups, scalarizer, extra: dict,
                    generators: dict[str, torch.Generator] | None = None,
                    sharding_type: str = DEFAULT_SHARDING, async_queue=None) -> Path:
    """Write the checkpoint after `step` policy steps; collective over all ranks.

    model_chunks: this rank's (DDP-wrapped) chunks; optimizer: megatron's optimizer;
    scheduler: `OptimizerParamScheduler`; scalarizer: the run's scalarizer (its
    `state_dict()` per DP rank; None on ranks without one); extra: JSON-able (data cursor,
    ...);
    generators: caller-owned per-rank generators to restore on resume;
    async_queue: megatron's `AsyncCallsQueue` for a background write (run.async_save):
    the model and optimizer shards are written by a forked process from the state as it
    is now; the RNG and scalarizer files and the metadata are taken now; hashing, the
    manifest, the rename and `latest` happen when the queue finalizes the write.
    Returns the final directory; `latest` names it once this returns (or, with
    async_queue, once the write is finalized).
    """
    ckpt_root = Path(ckpt_root)
    name = checkpoint_name(step)
    final, tmp = ckpt_root / name, ckpt_root / f"{TMP_PREFIX}{name}"
    extra_json = json.dumps(extra)  # fail on every rank before any collective
    leader = groups.rank == 0
    if leader:
        if tmp.exists():
            shutil.rmtree(tmp)  # a crashed earlier attempt
        tmp.mkdir(parents=True)
    dist.barrier()

    from megatron.core import dist_checkpointing

    sharded = _sharded_state(model_chunks, optimizer, groups, is_loading=False,
                             sharding_type=sharding_type)
    # Empty until here: megatron (rank 0) takes a non-empty directory for a crashed save
    # and warns "Overwriting old incomplete / corrupted checkpoint". Every rank passes
    # save's collectives only after rank 0's check, so the folders below come later.
    request = dist_checkpointing.save(
        sharded, str(tmp), content_metadata={"format": FORMAT, "sharding_type": sharding_type},
        async_sharded_save=async_queue is not None)
    (tmp / "rng").mkdir(exist_ok=True)  # every rank: no extra collective, same contents
    (tmp / SCALARIZER_DIR).mkdir(exist_ok=True)
    torch.save(_rng_state(generators), tmp / "rng" / f"rank_{groups.rank:05d}.pt")
    if _writes_scalarizer(groups, scalarizer):
        torch.save({"name": scalarizer.name, "state": scalarizer.state_dict()},
                   tmp / SCALARIZER_DIR / f"dp_{groups.dp_rank:05d}.pt")
    meta = {"format": FORMAT, "step": step, "extra": json.loads(extra_json),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "sharding_type": sharding_type, "num_model_chunks": len(model_chunks),
            "world_size": groups.world_size,
            "layout": {"tp_size": groups.tp_size, "pp_size": groups.pp_size,
                       "dp_size": groups.dp_size, "cp_size": groups.cp_size,
                       "vpp_size": groups.vpp_size}}

    def finish() -> None:
        """All ranks, once every shard is written: hash, manifest, rename, `latest`."""
        fault_point("checkpoint_write")  # testing hook (MAESTRO_FAULT): a torn temp directory
        dist.barrier()
        digests = _hash_files(tmp, list(_listing(tmp)))  # all written; each rank its own
        if leader:
            atomic_write_text(tmp / META, json.dumps(meta, indent=1))
            _write_manifest(tmp, digests)  # last: a directory with a manifest is complete
            if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(ckpt_root)
            atomic_write_text(ckpt_root / LATEST, name + "\n")
            fault_point("after_latest")
        dist.barrier()

    if async_queue is None:
        finish()
    else:
        request.add_finalize_fn(finish)
        async_queue.schedule_async_request(request)
    return final


def _is_complete(path: Path) -> bool:
    return path.is_dir() and _NAME.match(path.name) is not None and (path / META).is_file()


def _step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def _resume_plan(ckpt_root: Path) -> tuple[str | None, list[Path]]:
    """(what is wrong with `latest`, or None; the candidates to resume from, newest
    first: what `latest` names, else the newest ``step_*``, then the older ones)."""
    steps = sorted((p for p in ckpt_root.glob(f"{PREFIX}*")
                    if p.is_dir() and _NAME.match(p.name)), key=_step_of, reverse=True)
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None, steps
    name = pointer.read_text().strip()
    if not _NAME.match(name):
        return f"{pointer} names {name!r}, not a {PREFIX}NNNNNNNN directory", steps
    older = [p for p in steps if _step_of(p) < int(_NAME.match(name).group(1))]
    if not (ckpt_root / name).is_dir():
        return f"{pointer} names {name}, but {ckpt_root / name} does not exist", older
    return None, [ckpt_root / name, *older]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The directory `latest` names; without a `latest` file, the newest ``step_*``
    directory; None when there is neither. A `latest` naming no directory is a
    `CheckpointError`. Verifies nothing (`resume_checkpoint` does)."""
    problem, candidates = _resume_plan(Path(ckpt_root))
    if problem is not None:
        raise CheckpointError(problem)
    return candidates[0] if candidates else None


def resume_checkpoint(ckpt_root: Path, *, fallback: bool = False) -> Path | None:
    """The verified checkpoint a run in `ckpt_root` resumes from; None for a fresh start
    (no `latest` and no ``step_*`` directory). Collective: every rank gets the same answer.

    What `latest_checkpoint` finds must verify; if it does not (or `latest` names no
    directory) this raises `CheckpointError`, unless `fallback` (run.resume_fallback):
    then it warns in one line and returns the newest earlier checkpoint that verifies.
    """
    ckpt_root = Path(ckpt_root)
    rank, _ = _rank_world()
    problem, candidates = _broadcast(_resume_plan(ckpt_root) if rank == 0 else None)
    if problem is None:
        if not candidates:
            return None
        found = checkpoint_problem(candidates[0])
        if found is None:
            return candidates[0]
        problem, candidates = f"checkpoint {candidates[0]}: {found}", candidates[1:]
    if not fallback:
        hint = (f"set run.resume_fallback=true to resume from {candidates[0].name}, or the "
                "newest earlier checkpoint that verifies" if candidates
                else f"no earlier checkpoint in {ckpt_root} to fall back to")
        raise CheckpointError(f"{problem}; refusing to resume ({hint})")
    problems = [problem]
    for path in candidates:
        found = checkpoint_problem(path)
        if found is None:
            if rank == 0:
                print(f"warning: {'; '.join(problems)}; resuming from {path} instead "
                      "(run.resume_fallback=true)", file=sys.stderr, flush=True)
            return path
        problems.append(f"checkpoint {path}: {found}")
    raise CheckpointError(f"{'; '.join(problems)}; no earlier checkpoint in {ckpt_root} "
                          "verifies (run.resume_fallback=true)")


def resolve_checkpoint(path_or_root: Path) -> Path:
    """A checkpoint directory itself, or the one `latest_checkpoint` finds under a root."""
    path = Path(path_or_root)
    if (path / META).is_file() or (path / MANIFEST).is_file() or _NAME.match(path.name):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no checkpoint at or under {path}")
    return found


def load_checkpoint(path_or_root: Path, *, model_chunks, optimizer, scheduler,
                    groups: ParallelGroups, scalarizer,
                    generators: dict[str, torch.Generator] | None = None,
                    load_rng: bool = True, verify: bool = True) -> dict:
    """Restore everything `save_checkpoint` wrote; collective over all ranks.

    The manifest is verified first (`verify_checkpoint`; pass verify=False only for a
    directory `resume_checkpoint` just verified): a bad checkpoint is a CheckpointError
    before anything is read.

    The policy and optimizer reshard to the current TP/PP/DP layout (dist_checkpointing);
    the scalarizer's per-rank state is re-split if the DP size changed; RNG states are
    restored only when the world size is unchanged (per-rank streams). Pass scalarizer
    None on ranks that hold none. Returns
    {"step", "extra", "path", "rng_restored"}.
    """
    from megatron.core import dist_checkpointing

    path = resolve_checkpoint(path_or_root)
    if verify:
        verify_checkpoint(path)
    meta = json.loads((path / META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (format={meta.get('format')!r})")
    if meta["num_model_chunks"] != len(model_chunks):
        raise ValueError(f"{path}: saved with {meta['num_model_chunks']} model chunks per "
                         f"rank, this run has {len(model_chunks)}; resharding across VPP "
                         "sizes is not supported")
    sharded = _sharded_state(model_chunks, optimizer, groups, is_loading=True,
                             sharding_type=meta["sharding_type"])
    state = dist_checkpointing.load(sharded, str(path))
    for i, chunk in enumerate(model_chunks):
        unwrap_model(chunk).load_state_dict(state[f"model{i}"])
    if optimizer is not None:
        # megatron-core 0.16.1's dp_reshardable loader copies into the main params without
        # no_grad; with fp32 params those are views of leaves that require grad.
        with torch.no_grad():
            optimizer.load_state_dict(state["optimizer"])
            restore_adam_steps(optimizer)
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])

    if scalarizer is not None:
        _load_scalarizer(path, meta, groups, scalarizer)

    rng_file = path / "rng" / f"rank_{groups.rank:05d}.pt"
    rng_restored = (load_rng and meta["world_size"] == groups.world_size
                    and rng_file.is_file())
    if rng_restored:
        _set_rng_state(torch.load(rng_file, weights_only=False), generators)
    elif load_rng and groups.rank == 0:
        _log.warning("%s: saved with world size %d, now %d: RNG states not restored (the "
                     "run continues, but not bitwise as the uninterrupted one)",
                     path, meta["world_size"], groups.world_size)
    dist.barrier()
    return {"step": meta["step"], "extra": meta["extra"], "path": path,
            "rng_restored": rng_restored}


def prune_checkpoints(ckpt_root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (never the one `latest`
    names) and the temp directories of crashed saves. Call on one rank only, between
    saves.
    Returns the removed paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    ckpt_root = Path(ckpt_root)
    latest = latest_checkpoint(ckpt_root)
    complete = sorted((p for p in ckpt_root.glob(f"{PREFIX}*") if _is_complete(p)),
                      key=lambda p: int(_NAME.match(p.name).group(1)))
    doomed = [p for p in complete[:-keep] if p != latest]
    if complete:  # a temp dir no newer than a complete checkpoint is a crashed save
        newest = int(_NAME.match(complete[-1].name).group(1))
        for tmp in ckpt_root.glob(f"{TMP_PREFIX}{PREFIX}*"):
            match = _NAME.match(tmp.name[len(TMP_PREFIX):])
            if match and int(match.group(1)) <= newest:
                doomed.append(tmp)
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_step(state, step: int) -> None:
    """The run's checkpoint after `step` (a `setup.RunState`), then prune old ones; with
    run.async_save the write goes on in the background (`finish_saves`)."""
    queue = None
    if state.recipe.run.async_save:
        finish_saves(state)  # one background write at a time
        queue = state.async_saves
    save_checkpoint(state.ckpt_root, step, model_chunks=state.models.policy,
                    optimizer=state.optimizer, scheduler=state.scheduler, groups=state.groups,
                    scalarizer=state.scalarizer, extra={"data": state.stream.state_dict()},
                    async_queue=queue)
    if queue is None and state.groups.rank == 0:
        prune_checkpoints(state.ckpt_root, state.recipe.run.keep_checkpoints)


def finish_saves(state, blocking: bool = True) -> None:
    """Finalize background checkpoint writes (run.async_save) that are done (blocking:
    wait for all), then prune; collective over all ranks. A no-op without async_save."""
    queue = state.async_saves
    if queue is None or not queue.get_num_unfinalized_calls():
        return
    if queue.maybe_finalize_async_calls(blocking=blocking) and state.groups.rank == 0:
        prune_checkpoints(state.ckpt_root, state.recipe.run.keep_checkpoints)
