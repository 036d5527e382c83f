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
- ``meta.json`` (written last, by the leader): step, the caller's ``extra`` (data cursor,
  ...), the LR scheduler's state and the layout.

Atomicity: every rank writes into ``<ckpt_root>/.tmp-step_00000042``; after a barrier the
leader (global rank 0) renames it to ``step_00000042`` and then atomically replaces the
``latest`` file (write tmp + ``os.replace``). A crash at any point leaves ``latest``
naming the previous complete checkpoint and no partial directory named ``step_*``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from maestro_megatron.megatron.model import unwrap_model
from maestro_megatron.megatron.optimizer import ensure_optimizer_state, restore_adam_steps
from maestro_megatron.megatron.parallel import ParallelGroups
from maestro_megatron.trainer.outputs import atomic_write_text

LATEST = "latest"
META = "meta.json"
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


# ---------------------------------------------------------------- public API
def save_checkpoint(ckpt_root: Path, step: int, *, model_chunks, optimizer, scheduler,
                    groups: ParallelGroups, scalarizer, extra: dict,
                    generators: dict[str, torch.Generator] | None = None,
                    sharding_type: str = DEFAULT_SHARDING) -> Path:
    """Write the checkpoint after `step` policy steps; collective over all ranks.

    model_chunks: this rank's (DDP-wrapped) chunks; optimizer: megatron's optimizer;
    scheduler: `OptimizerParamScheduler`; scalarizer: the run's scalarizer (its
    `state_dict()` per DP rank; None on ranks without one); extra: JSON-able (data cursor,
    ...);
    generators: caller-owned per-rank generators to restore on resume.
    Returns the final directory; `latest` names it once this returns.
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
    dist_checkpointing.save(sharded, str(tmp),
                            content_metadata={"format": FORMAT, "sharding_type": sharding_type})
    (tmp / "rng").mkdir(exist_ok=True)  # every rank: no extra collective, same contents
    (tmp / SCALARIZER_DIR).mkdir(exist_ok=True)
    torch.save(_rng_state(generators), tmp / "rng" / f"rank_{groups.rank:05d}.pt")
    if _writes_scalarizer(groups, scalarizer):
        torch.save({"name": scalarizer.name, "state": scalarizer.state_dict()},
                   tmp / SCALARIZER_DIR / f"dp_{groups.dp_rank:05d}.pt")
    dist.barrier()

    if leader:
        meta = {"format": FORMAT, "step": step, "extra": json.loads(extra_json),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "sharding_type": sharding_type, "num_model_chunks": len(model_chunks),
                "world_size": groups.world_size,
                "layout": {"tp_size": groups.tp_size, "pp_size": groups.pp_size,
                           "dp_size": groups.dp_size, "cp_size": groups.cp_size,
                           "vpp_size": groups.vpp_size}}
        atomic_write_text(tmp / META, json.dumps(meta, indent=1))
        if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        atomic_write_text(ckpt_root / LATEST, name + "\n")
    dist.barrier()
    return final


def _is_complete(path: Path) -> bool:
    return path.is_dir() and _NAME.match(path.name) is not None and (path / META).is_file()


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The directory `latest` names; if that file is missing or stale, the newest
    complete ``step_*`` directory; None when there is none."""
    ckpt_root = Path(ckpt_root)
    pointer = ckpt_root / LATEST
    if pointer.is_file():
        named = ckpt_root / pointer.read_text().strip()
        if _is_complete(named):
            return named
    complete = [p for p in ckpt_root.glob(f"{PREFIX}*") if _is_complete(p)]
    return max(complete, key=lambda p: int(_NAME.match(p.name).group(1)), default=None)


def resolve_checkpoint(path_or_root: Path) -> Path:
    """A checkpoint directory itself, or the latest complete one under a root."""
    path = Path(path_or_root)
    if (path / META).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint at or under {path}")
    return found


def load_checkpoint(path_or_root: Path, *, model_chunks, optimizer, scheduler,
                    groups: ParallelGroups, scalarizer,
                    generators: dict[str, torch.Generator] | None = None,
                    load_rng: bool = True) -> dict:
    """Restore everything `save_checkpoint` wrote; collective over all ranks.

    The policy and optimizer reshard to the current TP/PP/DP layout (dist_checkpointing);
    the scalarizer's per-rank state is re-split if the DP size changed; RNG states are
    restored only when the world size is unchanged (per-rank streams). Pass scalarizer
    None on ranks that hold none. Returns
    {"step", "extra", "path", "rng_restored"}.
    """
    from megatron.core import dist_checkpointing

    path = resolve_checkpoint(path_or_root)
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
    """The run's checkpoint after `step` (a `setup.RunState`), then prune old ones."""
    save_checkpoint(state.ckpt_root, step, model_chunks=state.models.policy,
                    optimizer=state.optimizer, scheduler=state.scheduler, groups=state.groups,
                    scalarizer=state.scalarizer, extra={"data": state.stream.state_dict()})
    if state.groups.rank == 0:
        prune_checkpoints(state.ckpt_root, state.recipe.run.keep_checkpoints)
