"""Live Megatron shards -> full HF-named tensors, one tensor at a time (for refit/export).

Uses the same per-architecture mapping (`DecoderMapping.units`) as the checkpoint
converter. For each unit, in the mapping's order: the pipeline stage that holds it is
found with a MAX all-reduce over the PP group, its TP peers all-gather their shards
(`layout.tp_gather`), the stage broadcasts the full tensor over the PP group, and the
leader (TP rank 0, PP rank 0, DP/CP rank 0: global rank 0) maps it to HF names.
Only the first data-parallel replica takes part (the others hold the same weights).
Peak extra memory: one full megatron tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.megatron.model import unwrap_model
from maestro_megatron.megatron.parallel import ParallelGroups, collective_device
from maestro_megatron.weights import layout
from maestro_megatron.weights.mapping import DecoderMapping
from maestro_megatron.weights.units import Unit, to_hf


def _find_param(chunks: list[torch.nn.Module], unit: Unit) -> torch.Tensor | None:
    """This rank's parameter of `unit` (its TP shard), or None if another stage holds it."""
    for chunk in chunks:
        model = unwrap_model(chunk)
        impl = getattr(model.config, "transformer_impl", "local")
        spec = "transformer_engine" if impl == "transformer_engine" else "local"
        local = None
        if unit.layer is not None:
            layers = {layer.layer_number - 1: j for j, layer in enumerate(model.decoder.layers)}
            if unit.layer not in layers:
                continue
            local = layers[unit.layer]
        name = unit.param_name(spec, local)
        params = dict(model.named_parameters())
        if name in params:
            return params[name]
    return None


def _owner_stage(param: torch.Tensor | None, groups: ParallelGroups, unit: Unit,
                 device) -> int:
    flag = torch.tensor([groups.pp_rank + 1 if param is not None else 0], device=device)
    if groups.pp_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=groups.pp)
    owner = int(flag)  # a host read: every rank needs the owner to go on
    if owner == 0:
        raise KeyError(f"no pipeline stage holds {unit.param_name()} (HF {unit.hf_names})")
    return owner - 1


def _tp_full(param: torch.Tensor, unit: Unit, groups: ParallelGroups) -> torch.Tensor:
    shard = param.detach().contiguous()
    if unit.tp_split == "replicated" or groups.tp_size == 1:
        return shard
    shards = [torch.empty_like(shard) for _ in range(groups.tp_size)]
    dist.all_gather(shards, shard, group=groups.tp)
    return layout.tp_gather(unit.tp_split, shards)


def _pp_broadcast(full: torch.Tensor | None, owner: int, groups: ParallelGroups,
                  dtype: torch.dtype, device) -> torch.Tensor:
    if groups.pp_size == 1:
        return full
    src = dist.get_global_rank(groups.pp, owner)
    meta = torch.zeros(4, dtype=torch.long, device=device)
    if full is not None:
        meta[0] = full.dim()
        meta[1:1 + full.dim()] = torch.tensor(full.shape)
    dist.broadcast(meta, src=src, group=groups.pp)
    if full is None:
        full = torch.empty(tuple(meta[1:1 + int(meta[0])].tolist()), dtype=dtype, device=device)
    dist.broadcast(full, src=src, group=groups.pp)
    return full


def is_refit_leader(groups: ParallelGroups, all_replicas: bool = False) -> bool:
    """The rank that receives the full tensors (and talks to the rollout engine): global
    rank 0, or with `all_replicas` the first rank of each data-parallel replica."""
    if all_replicas:
        return groups.tp_rank == 0 and groups.pp_rank == 0 and groups.cp_rank == 0
    return groups.rank == 0


@torch.no_grad()
def iter_hf_weights(model_chunks: list[torch.nn.Module], mapping: DecoderMapping,
                    cfg: ModelConfig, groups: ParallelGroups, all_replicas: bool = False,
                    leader: bool | None = None) -> Iterator[tuple[str, torch.Tensor | None]]:
    """Yield (hf_name, full tensor) on the leader and (hf_name, None) elsewhere.

    Must be exhausted on EVERY rank (it runs collectives). Only the first data-parallel
    replica gathers (the others return at once), unless `all_replicas`: then every
    replica gathers over its own TP/PP groups to its own first rank (per-replica
    refit; nothing crosses replicas). Tensors are yielded in the mapping's order,
    unpadded, in the model's dtype, on the leader's device. leader: whether this rank
    receives them (default `is_refit_leader`); any rank of context-parallel rank 0 of a
    gathering replica may (every stage gets each full tensor), e.g. each engine's host.
    """
    if groups.cp_rank != 0 or (groups.dp_rank != 0 and not all_replicas):
        return
    dtype = unwrap_model(model_chunks[0]).config.params_dtype
    device = collective_device()
    receives = is_refit_leader(groups, all_replicas) if leader is None else leader
    for unit in mapping.units(cfg):
        param = _find_param(model_chunks, unit)
        owner = _owner_stage(param, groups, unit, device)
        full = _tp_full(param, unit, groups) if groups.pp_rank == owner else None
        full = _pp_broadcast(full, owner, groups, dtype, device)
        tensors = to_hf(unit, full, cfg) if receives else [None] * len(unit.hf_names)
        yield from zip(unit.hf_names, tensors)
