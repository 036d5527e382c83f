"""torchrun worker (2 ranks, gloo): batch-level statistics equal the single-process ones.

Rank r holds prompts [2r, 2r + 2) of a 4-prompt x G=2 batch. `normalization: batch`
with the moments summed over ranks, and the PPO mini-batch assignment, must give what
one process computes for the whole batch. Rank 0 writes OUT (a torch file).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from maestro_megatron.data.packing import minibatch_rows
from maestro_megatron.rewards import normalize_components


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rewards = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0)) * 3 + 1
    per_rank = 4 // world
    mine = rewards[rank * per_rank:(rank + 1) * per_rank]

    def all_sum(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    parts = [None] * world
    dist.all_gather_object(parts, {
        "global": normalize_components(mine, "batch", all_sum),
        "local_only": normalize_components(mine, "batch"),
        "minibatches": [(rows // 2 + rank * per_rank).tolist()  # global prompt ids
                        for rows in minibatch_rows(per_rank, 2, 2, rank * per_rank)]})
    if rank == 0:
        torch.save({"parts": parts, "whole": normalize_components(rewards, "batch"),
                    "whole_minibatches": [(rows // 2).tolist()
                                          for rows in minibatch_rows(4, 2, 2)]}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
