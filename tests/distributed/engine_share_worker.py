"""4 gloo ranks: each engine of a placement (maestro_megatron/plan/placement.py) makes a
labelled batch for its share of the prompts; `share_rollouts` gives every rank its own
replica's groups. Writes one JSON per rank: per layout, the prompts and responses it got."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from maestro_megatron.plan.placement import place_engines
from maestro_megatron.trainer.engine_share import make_share, share_rollouts
from maestro_megatron.trainer.rollouts import RolloutBatch

G = 2
LAYOUTS = {  # CPU placements (no GPUs) on 4 ranks
    "tp2_pp2_two_engines": dict(tp=2, pp=2, placement="replica", engines_per_replica=2,
                                num_prompts=4),
    "pp2_dp2_two_engines_each": dict(pp=2, placement="replica", engines_per_replica=2,
                                     num_prompts=8),
    "tp2_dp2_leader": dict(tp=2, placement="leader", num_prompts=4),
}


def fake_batch(first: int, count: int) -> RolloutBatch:
    idx = range(first, first + count)
    return RolloutBatch(prompts=[f"p{i}" for i in idx], references=[None] * count,
                        tasks=["t"] * count, prompt_ids=[[i] for i in idx],
                        response_ids=[[i, j] for i in idx for j in range(G)],
                        response_texts=[f"p{i}/{j}" for i in idx for j in range(G)],
                        truncated=[False] * count * G, group_size=G,
                        rollout_logprobs=[[-1.0] * 2 for _ in range(count * G)])


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    got = {}
    for name, kw in LAYOUTS.items():
        placement = place_engines(world=world, gpus_per_node=None, **kw)
        share = make_share(placement, rank, world)
        slot = share.slot
        batch = fake_batch(slot.first_prompt, slot.num_prompts) if slot else None
        tp, pp = kw.get("tp", 1), kw.get("pp", 1)
        dp = world // (tp * pp)
        dp_rank = rank // tp % dp
        per_rank = kw["num_prompts"] // dp
        mine = share_rollouts(batch, share, rank, dp_rank * per_rank, per_rank)
        got[name] = {"host": slot is not None, "prompts": mine.prompts,
                     "responses": mine.response_texts, "response_ids": mine.response_ids}
    (out / f"rank{rank}.json").write_text(json.dumps(got))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
