"""Where the preference reward model lives (`rewards.pref.placement`,
`memory.offload_reward_model`): plumbing around any scorer of `maestro_megatron.scorers`.

- rank: every last-stage rank holds the model and scores its own rows;
- tp_leader: tensor-parallel peers hold the same responses, so only TP rank 0 of each
  last-stage TP group holds the model; it scores and broadcasts the [B] scores to its
  peers (one copy and one scoring pass per TP group instead of TP of each);
- with memory.offload_reward_model the model's weights stay in host memory and are
  copied onto the GPU for each scoring call only (`megatron/offload.py`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from maestro_megatron.megatron.offload import offload, resident
from maestro_megatron.megatron.parallel import ParallelGroups, collective_device


class OffloadedScorer:
    """A scorer whose `.model` is on the host between `score` calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        inner.model.requires_grad_(False)
        offload([inner.model])

    def score(self, prompts, responses, references) -> torch.Tensor:
        with resident([self.inner.model], self.inner.device):
            return self.inner.score(prompts, responses, references)


class TPLeaderScorer:
    """TP rank 0 scores with `inner`; every rank of the TP group returns its scores."""

    def __init__(self, inner, tp_group: dist.ProcessGroup) -> None:
        self.inner, self.tp_group = inner, tp_group
        self.src = dist.get_global_rank(tp_group, 0)

    def score(self, prompts, responses, references) -> torch.Tensor:
        """-> [B] fp32 on the host (the leader's values on every TP rank)."""
        if self.inner is not None:
            scores = torch.as_tensor(self.inner.score(prompts, responses, references),
                                     dtype=torch.float32).reshape(len(responses))
            buf = scores.to(collective_device())
        else:
            buf = torch.empty(len(responses), dtype=torch.float32, device=collective_device())
        dist.broadcast(buf, src=self.src, group=self.tp_group)
        return buf.cpu()


def holds_reward_model(placement: str, groups: ParallelGroups) -> bool:
    """Whether this last-stage rank loads the reward model."""
    return placement == "rank" or groups.tp_rank == 0


def place_scorer(pref_cfg, memory_cfg, groups: ParallelGroups, build):
    """The scorer this last-stage rank calls; `build()` makes the real one, and is
    called only on ranks that hold the model."""
    placement = pref_cfg.placement
    inner = build() if holds_reward_model(placement, groups) else None
    if inner is not None and memory_cfg.offload_reward_model and hasattr(inner, "model"):
        inner = OffloadedScorer(inner)
    if placement == "tp_leader" and groups.tp_size > 1:
        return TPLeaderScorer(inner, groups.tp)
    return inner
