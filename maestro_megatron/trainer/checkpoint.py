"""Atomic, resumable training checkpoints (DESIGN.md section 6).

One checkpoint directory ``<ckpt_root>/step_00000042/`` holds

- the policy and its (distributed) optimizer state as one megatron-core ``torch_dist``
  checkpoint (every rank writes its shards; ``model0``, ``model1``, ... are the VPP
  chunks, ``optimizer`` the optimizer's sharded state),
- ``conductor/dp_00000.pt``: the Conductor (state_dict + config: templates, tau, p_min,
  d_model) and its Adam state, written once (it is replicated on every last-stage
  rank), and per data-parallel rank the meta buffer (each DP rank buffers the (h, a, A)
  triples of its own share of the batch),
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


def _ensure_optimizer_state(optimizer) -> None:
    """Allocate the Adam state of a fresh distributed optimizer before loading into it.

    Without Apex/TE (CPU: torch Adam), megatron-core 0.16.1's
    `DistributedOptimizer.state_dict()`, which `sharded_state_dict(is_loading=True)`
    calls first, asserts that the inner optimizer already holds a "step". Megatron's own
    remedy (used for FSDP) is one optimizer step on zero gradients; it runs here at lr 0
    so that not even weight decay touches the parameters (they are loaded next anyway).
    """
    from megatron.core.optimizer import distrib_optimizer as dopt

    if dopt.HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, dopt.DistributedOptimizer) or opt.optimizer.state:
            continue
        lrs = [group["lr"] for group in opt.optimizer.param_groups]
        for group in opt.optimizer.param_groups:
            group["lr"] = 0.0
        opt._init_optimizer_states_with_dummy_values()
        for group, lr in zip(opt.optimizer.param_groups, lrs):
            group["lr"] = lr


def _restore_adam_steps(optimizer) -> None:
    """Put the checkpoint's Adam step back into torch Adam's per-parameter state.

    megatron-core 0.16.1 stores the distributed optimizer's step in its param groups and
    keeps the per-parameter "step" tensor as a LocalNonpersistentObject, i.e. the
    *current* (pre-load) tensor, which `load_state_dict` then copies back over the
    loaded step, and its `load_state_dict` hands ONE step tensor to every parameter,
    which torch's foreach Adam then increments once per parameter and step. Without
    Apex/TE (torch Adam) either would corrupt the bias correction; each parameter gets
    its own tensor holding the checkpoint's step here.
    """
    from megatron.core.optimizer import distrib_optimizer as dopt

    if dopt.HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, dopt.DistributedOptimizer):
            continue
        for group in opt.optimizer.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                state = opt.optimizer.state.get(param, {})
                if "step" in state:
                    old = state["step"]
                    state["step"] = torch.full_like(old, float(group["step"]))


def _sharded_state(model_chunks, optimizer, groups: ParallelGroups, *, is_loading: bool,
                   sharding_type: str) -> dict:
    """{"model<i>": chunk sharded state, "optimizer": optimizer sharded state}."""
    state = _model_sharded_state(model_chunks, groups)
    if optimizer is not None:
        if is_loading:
            _ensure_optimizer_state(optimizer)
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


# ---------------------------------------------------------------- Conductor
def _conductor_config(conductor) -> dict[str, Any]:
    return {"d_model": conductor.d_model, "tau": conductor.tau, "p_min": conductor.p_min,
            "templates": conductor.templates.detach().cpu().clone()}


def _writes_conductor(groups: ParallelGroups, conductor) -> bool:
    """One writer per DP rank: the last-stage, TP-rank-0, CP-rank-0 replica."""
    return (conductor is not None and groups.is_last_stage and groups.tp_rank == 0
            and groups.cp_rank == 0)


def _check_conductor_config(saved: dict[str, Any], conductor) -> None:
    mine = _conductor_config(conductor)
    for key in ("d_model", "tau", "p_min"):
        if saved[key] != mine[key]:
            raise ValueError(f"conductor.{key}: checkpoint has {saved[key]}, run has {mine[key]}")
    if not torch.equal(saved["templates"], mine["templates"]):
        raise ValueError("conductor.templates: checkpoint templates differ from the run's")


def _load_meta_buffer(ckpt: Path, meta: dict, groups: ParallelGroups, meta_buffer) -> None:
    """Own DP rank's triples; under a new DP size, all triples re-split evenly (the
    Conductor loss is a mean over the triples, so the assignment to ranks is free)."""
    saved_dp = meta["layout"]["dp_size"]
    if saved_dp == groups.dp_size:
        state = torch.load(ckpt / "conductor" / f"dp_{groups.dp_rank:05d}.pt",
                           weights_only=False)["meta_buffer"]
        meta_buffer.load_state_dict(state)
        return
    parts = [torch.load(ckpt / "conductor" / f"dp_{r:05d}.pt", weights_only=False)["meta_buffer"]
             for r in range(saved_dp)]
    parts = [p for p in parts if p]
    if not parts:
        meta_buffer.load_state_dict({})
        return
    full = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    total = full["actions"].numel()
    if total % groups.dp_size:
        raise ValueError(f"meta buffer of {total} triples cannot be split over "
                         f"{groups.dp_size} data-parallel ranks")
    size = total // groups.dp_size
    lo = groups.dp_rank * size
    meta_buffer.load_state_dict({k: v[lo:lo + size] for k, v in full.items()})


# ---------------------------------------------------------------- public API
def save_checkpoint(ckpt_root: Path, step: int, *, model_chunks, optimizer, scheduler,
                    groups: ParallelGroups, conductor, conductor_optimizer, meta_buffer,
                    extra: dict, generators: dict[str, torch.Generator] | None = None,
                    sharding_type: str = DEFAULT_SHARDING) -> Path:
    """Write the checkpoint after `step` policy steps; collective over all ranks.

    model_chunks: this rank's (DDP-wrapped) chunks; optimizer: megatron's optimizer;
    scheduler: `OptimizerParamScheduler`; conductor / conductor_optimizer / meta_buffer:
    None on ranks without a Conductor; extra: JSON-able (data cursor, ...);
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
        (tmp / "rng").mkdir(parents=True)
        (tmp / "conductor").mkdir()
    dist.barrier()

    from megatron.core import dist_checkpointing

    sharded = _sharded_state(model_chunks, optimizer, groups, is_loading=False,
                             sharding_type=sharding_type)
    dist_checkpointing.save(sharded, str(tmp),
                            content_metadata={"format": FORMAT, "sharding_type": sharding_type})
    torch.save(_rng_state(generators), tmp / "rng" / f"rank_{groups.rank:05d}.pt")
    if _writes_conductor(groups, conductor):
        blob: dict[str, Any] = {"meta_buffer": (meta_buffer.state_dict()
                                              if meta_buffer is not None else {})}
        if groups.dp_rank == 0:
            blob["config"] = _conductor_config(conductor)
            blob["state_dict"] = conductor.state_dict()
            blob["optimizer"] = (conductor_optimizer.state_dict()
                                 if conductor_optimizer is not None else None)
        torch.save(blob, tmp / "conductor" / f"dp_{groups.dp_rank:05d}.pt")
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
                    groups: ParallelGroups, conductor, conductor_optimizer, meta_buffer,
                    generators: dict[str, torch.Generator] | None = None,
                    load_rng: bool = True) -> dict:
    """Restore everything `save_checkpoint` wrote; collective over all ranks.

    The policy and optimizer reshard to the current TP/PP/DP layout (dist_checkpointing);
    the meta buffer is re-split if the DP size changed; RNG states are restored only
    when the world size is unchanged (per-rank streams). Pass conductor /
    conductor_optimizer / meta_buffer as None on ranks that hold no Conductor. Returns
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
            _restore_adam_steps(optimizer)
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])

    if conductor is not None:
        saved = path / "conductor" / "dp_00000.pt"
        if not saved.is_file():
            raise FileNotFoundError(f"{path}: holds no Conductor (the run that saved it had "
                                    "none), but this run has one")
        blob = torch.load(saved, weights_only=False)
        _check_conductor_config(blob["config"], conductor)
        conductor.load_state_dict(blob["state_dict"])
        if conductor_optimizer is not None and blob["optimizer"] is not None:
            conductor_optimizer.load_state_dict(blob["optimizer"])
        if meta_buffer is not None:
            _load_meta_buffer(path, meta, groups, meta_buffer)

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
