"""Which GPU holds what: the megatron rank layout, rollout engines, reward models.

Global ranks follow megatron-core's default order tp-cp-dp-pp (TP fastest):
rank = tp + TP (cp + CP (dp + DP pp)); rank r sits on node r // gpus_per_node, local
GPU r % gpus_per_node. Rollout engines: `maestro_megatron.plan.placement` (what the
trainer starts): placement `leader`, one engine on GPUs 0 .. rollout.tensor_parallel - 1
of node 0; `replica`, rollout.engines_per_replica engines per data-parallel replica (or
per group of replicas one engine is wider than), each on rollout.tensor_parallel of the
replica's GPUs of one node, spread over its nodes first. The reward model lives on
last-stage ranks: every one (placement rank) or TP rank 0 only (tp_leader).
GPUs with the same (pipeline rank, engine shards, reward model) hold the same bytes:
a `GpuRole`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from maestro_megatron.config.schema import Recipe
from maestro_megatron.errors import UserError
from maestro_megatron.plan.placement import placement_for


@dataclass(frozen=True)
class Layout:
    """The trainer's parallel layout on `world` GPUs."""

    world: int
    gpus_per_node: int
    tp: int
    pp: int
    vpp: int | None
    cp: int
    dp: int

    @property
    def nodes(self) -> int:
        return -(-self.world // self.gpus_per_node)

    def coords(self, rank: int) -> tuple[int, int, int, int]:
        """rank -> (tp, cp, dp, pp) ranks."""
        tp, rest = rank % self.tp, rank // self.tp
        cp, rest = rest % self.cp, rest // self.cp
        return tp, cp, rest % self.dp, rest // self.dp


def make_layout(recipe: Recipe, world: int, gpus_per_node: int) -> Layout:
    """The layout of `recipe` on `world` GPUs; UserError when it does not divide."""
    par = recipe.parallel
    model_parallel = par.tensor_parallel * par.pipeline_parallel * par.context_parallel
    if world < 1 or gpus_per_node < 1:
        raise UserError(f"world size {world} and GPUs per node {gpus_per_node} must be >= 1")
    if world % model_parallel:
        raise UserError(f"parallel: world size {world} is not divisible by tensor_parallel x "
                        f"pipeline_parallel x context_parallel = {model_parallel}")
    return Layout(world, gpus_per_node, par.tensor_parallel, par.pipeline_parallel,
                  par.virtual_pipeline_parallel, par.context_parallel, world // model_parallel)


@dataclass(frozen=True)
class GpuRole:
    """What distinguishes one GPU's memory from another's."""

    pp_rank: int
    engines: int
    """Rollout-engine shards on this GPU (0, 1, more if engines overlap)."""
    reward_model: bool


def engine_shards(recipe: Recipe, layout: Layout) -> Counter:
    """Global rank -> rollout-engine shards on its GPU (empty for run.algorithm sft)."""
    if recipe.run.algorithm == "sft":
        return Counter()
    return placement_for(recipe, layout.world, layout.gpus_per_node).shards()


def num_engines(recipe: Recipe, layout: Layout) -> int:
    """How many rollout engines the run starts (0 for run.algorithm sft)."""
    if recipe.run.algorithm == "sft":
        return 0
    return len(placement_for(recipe, layout.world, layout.gpus_per_node).engines)


def holds_reward_model(recipe: Recipe, layout: Layout, rank: int, has_scorer: bool) -> bool:
    """Whether `rank` loads the preference reward model."""
    tp, _, _, pp = layout.coords(rank)
    if not has_scorer or recipe.run.algorithm == "sft" or pp != layout.pp - 1:
        return False
    return recipe.rewards.pref.placement == "rank" or tp == 0


def gpu_roles(recipe: Recipe, layout: Layout, has_scorer: bool) -> Counter:
    """GpuRole -> number of GPUs with that role (every global rank counted once)."""
    shards = engine_shards(recipe, layout)
    roles: Counter = Counter()
    for rank in range(layout.world):
        pp = layout.coords(rank)[3]
        roles[GpuRole(pp, shards[rank], holds_reward_model(recipe, layout, rank,
                                                            has_scorer))] += 1
    return roles


def role_label(role: GpuRole, layout: Layout, varying: set[str], tp_leader: bool) -> str:
    """Words for a role: its pipeline stage (PP > 1) and the attributes in `varying`
    ("engines", "reward_model"; see `varying_attributes`)."""
    parts = []
    if layout.pp > 1:
        if role.pp_rank == 0:
            parts.append("first pipeline stage")
        elif role.pp_rank == layout.pp - 1:
            parts.append("last pipeline stage")
        else:
            parts.append(f"pipeline stage {role.pp_rank + 1} of {layout.pp}")
    if "engines" in varying:
        parts.append({0: "no engine", 1: "engine GPU"}.get(role.engines,
                                                          f"{role.engines} engine shards"))
    elif role.engines > 1:
        parts.append(f"{role.engines} engine shards")
    if "reward_model" in varying:
        if tp_leader:
            parts.append("TP rank 0 (reward model)" if role.reward_model else "TP rank > 0")
        else:
            parts.append("reward model" if role.reward_model else "no reward model")
    return ", ".join(parts) or "every GPU"


def varying_attributes(roles) -> set[str]:
    """Which of engines / reward_model differ between GPUs of one pipeline stage (what
    the stage alone does not tell apart)."""
    out = set()
    for name in ("engines", "reward_model"):
        for stage in {r.pp_rank for r in roles}:
            if len({getattr(r, name) for r in roles if r.pp_rank == stage}) > 1:
                out.add(name)
    return out
