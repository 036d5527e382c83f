"""Rollouts from the engines to the ranks they serve (placement:
maestro_megatron/plan/placement.py).

Each engine of a unit (a data-parallel replica, or the replicas one engine covers)
generates a contiguous share of the unit's prompts; the shares are broadcast over the
unit's process group, one per engine, joined in prompt order, and every rank keeps its
own replica's groups. Placement leader: one engine, the unit is the world.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.distributed as dist

from maestro_megatron.plan.placement import EngineSlot, Placement
from maestro_megatron.trainer.rollouts import RolloutBatch, broadcast_rollouts


@dataclass
class RolloutShare:
    """This rank's side of the placement."""

    slot: EngineSlot | None
    """The engine this rank drives (None: none)."""
    engines: tuple[EngineSlot, ...]
    """The engines of this rank's unit, in prompt order."""
    group: dist.ProcessGroup | None
    """The unit's ranks (None: the world)."""

    @property
    def first_prompt(self) -> int:
        """Global index of the unit's first prompt."""
        return self.engines[0].first_prompt


def make_share(placement: Placement, rank: int, world_size: int) -> RolloutShare:
    """Collective over the world: every rank creates every unit's process group, in the
    placement's order (torch.distributed's rule for new groups)."""
    world = tuple(range(world_size))
    group = None
    for ranks in placement.units():
        made = None if ranks == world else dist.new_group(list(ranks))
        if rank in ranks:
            group = made
    return RolloutShare(placement.hosted_by(rank),
                        tuple(e for e in placement.engines if rank in e.ranks), group)


def concat_rollouts(parts: list[RolloutBatch]) -> RolloutBatch:
    """Batches of consecutive prompts as one batch (prompt and response order kept)."""
    if len(parts) == 1:
        return parts[0]
    names = [f.name for f in dataclasses.fields(RolloutBatch) if f.name != "group_size"]
    return RolloutBatch(**{n: [x for p in parts for x in getattr(p, n)] for n in names},
                        group_size=parts[0].group_size)


def share_rollouts(batch: RolloutBatch | None, share: RolloutShare, rank: int,
                   first: int, count: int) -> RolloutBatch:
    """Collective over the unit: `batch` (this rank's engine's share, None on other
    ranks) from every engine to every rank of the unit -> prompts [first, first + count)
    of the step's batch (this rank's groups)."""
    parts = [broadcast_rollouts(batch if e.host == rank else None, src=e.host, group=share.group)
             for e in share.engines]
    return concat_rollouts(parts).groups_slice(first - share.first_prompt, count)
