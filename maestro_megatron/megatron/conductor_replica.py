"""The Conductor as a replicated module on every last-pipeline-stage rank (DESIGN.md 4).

Plumbing only: the math is `maestro_megatron.conductor`, the sampling and the update
hooks are `maestro_megatron.scalarizers.ConductorScalarizer`. Every last-stage rank
holds a full copy. TP peers see identical h (the final-layernorm output is replicated
across TP without sequence parallelism) and the same slice of the step's uniform
stream, so they draw identical actions; DP ranks take their own slice of that stream
(layout-invariant sampling). The functions here are what the trainer passes to the
scalarizer as its `ReplicaSync`: DP gradient averaging (each rank's loss is the mean
over its own N_local*G triples; with equal shards the DP average is the global 1/(NG)
mean) and the TP drift check.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from maestro_megatron.conductor import Conductor
from maestro_megatron.megatron.parallel import collective_device


def broadcast_parameters(conductor: Conductor, group: dist.ProcessGroup) -> None:
    """Make every rank of `group` hold the parameters of the group's first rank."""
    src = dist.get_global_rank(group, 0)
    for param in conductor.parameters():
        dist.broadcast(param.data, src=src, group=group)


def average_gradients(conductor: Conductor, dp_group: dist.ProcessGroup) -> None:
    """All-reduce the Conductor's gradients to their mean over data-parallel ranks."""
    size = dist.get_world_size(dp_group)
    if size == 1:
        return
    grads = [p.grad for p in conductor.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=dp_group)
    flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def replica_drift(conductor: Conductor, group: dist.ProcessGroup) -> float:
    """Max |param - param on the group's first rank| over the group (0.0 = in sync)."""
    flat = torch.cat([p.detach().flatten() for p in conductor.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=dist.get_global_rank(group, 0), group=group)
    drift = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(drift, op=dist.ReduceOp.MAX, group=group)
    return float(drift)


def check_replicas(conductor: Conductor, group: dist.ProcessGroup, tol: float = 0.0) -> None:
    """Raise if the Conductor replicas of `group` differ by more than `tol`."""
    drift = replica_drift(conductor, group)
    if drift > tol:
        raise RuntimeError(f"Conductor replicas drifted apart: max |diff| = {drift:.3e}")


def sum_over_group(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """A copy of `tensor` summed over `group` (the input is left as it is), on the
    input's device: the batch statistics of the host-side scalarization ([K] sums) go
    through the collective's device (a GPU under NCCL) and come back."""
    if dist.get_world_size(group) == 1:
        return tensor.clone()
    out = tensor.to(collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.to(tensor.device)
