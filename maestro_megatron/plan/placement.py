"""Where rollout engines run and which prompts each generates: a pure function of the
layout (no torch, no vLLM).

Global ranks follow megatron-core's order tp-cp-dp-pp (TP fastest) and sit on their
node's GPUs in order: rank r is local GPU r % gpus_per_node of node r // gpus_per_node
(one rank per GPU, ranks placed node by node: torchrun, `srun --distribution=block`).

An engine serves a *unit*: one data-parallel replica, or, when an engine is wider than
a replica's GPUs on a node (rollout.tensor_parallel a multiple of them), the fewest
consecutive replicas whose GPUs it can be cut from. The unit's GPUs on each node are cut
into blocks of rollout.tensor_parallel GPUs (an engine never spans nodes); the unit's
`rollout.engines_per_replica` engines take those blocks one node at a time (the first
block of each node, then the second, ...), so several engines of a replica spread over
its nodes (its pipeline stages). Each engine is driven by the rank on its first GPU and
generates a contiguous, balanced share of its unit's prompts; every rank of the unit
receives the unit's responses and keeps its own replica's groups. Placement `leader`:
one engine on global rank 0, GPUs 0 .. rollout.tensor_parallel - 1 of node 0, for the
whole batch. Without GPUs (CPU runs) the hosts are the same ranks and there are no
device indices: leader rank 0, or each replica's first ranks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from maestro_megatron.errors import UserError


@dataclass(frozen=True)
class EngineSlot:
    """One rollout engine: where it runs and what it generates."""

    index: int
    host: int
    """The global rank that starts and drives it (the rank on its first GPU)."""
    node: int | None
    """Its node (None without GPUs)."""
    local_gpus: tuple[int, ...]
    """Its GPUs, as indices among the node's visible GPUs (empty without GPUs)."""
    replicas: tuple[int, ...]
    """The data-parallel ranks of its unit (whose groups it generates a share of)."""
    first_prompt: int
    """Global index (in the step's batch) of its first prompt."""
    num_prompts: int
    ranks: tuple[int, ...]
    """Every global rank of its unit: they all receive the unit's responses."""


@dataclass(frozen=True)
class Placement:
    """Every engine of a run, in unit order."""

    engines: tuple[EngineSlot, ...]
    engine_tp: int
    gpus_per_node: int | None

    def hosted_by(self, rank: int) -> EngineSlot | None:
        """The engine `rank` drives (None: it drives none)."""
        return next((e for e in self.engines if e.host == rank), None)

    def serving(self, dp_rank: int) -> tuple[EngineSlot, ...]:
        """The engines of the unit of data-parallel rank `dp_rank`, in prompt order."""
        return tuple(e for e in self.engines if dp_rank in e.replicas)

    def units(self) -> list[tuple[int, ...]]:
        """The ranks of each unit, in order (one process group each)."""
        return list(dict.fromkeys(e.ranks for e in self.engines))

    def shards(self) -> Counter:
        """Global rank -> engine shards on its GPU (empty without GPUs)."""
        out: Counter = Counter()
        for e in self.engines:
            for gpu in e.local_gpus:
                out[e.node * self.gpus_per_node + gpu] += 1
        return out


def _coords(rank: int, tp: int, cp: int, dp: int) -> tuple[int, int, int, int]:
    """rank -> (tp, cp, dp, pp) ranks."""
    t, rest = rank % tp, rank // tp
    c, rest = rest % cp, rest // cp
    return t, c, rest % dp, rest // dp


def _unit_ranks(replicas: range, tp: int, pp: int, cp: int, dp: int) -> list[int]:
    return sorted(t + tp * (c + cp * (d + dp * p)) for d in replicas for p in range(pp)
                  for c in range(cp) for t in range(tp))


def _by_node(ranks: list[int], gpn: int) -> dict[int, list[int]]:
    """node -> the local GPU indices of `ranks` on it, both in order."""
    out: dict[int, list[int]] = {}
    for r in ranks:
        out.setdefault(r // gpn, []).append(r % gpn)
    return out


def _unit_size(engine_tp: int, gpn: int, tp: int, pp: int, cp: int, dp: int) -> int:
    """The fewest consecutive replicas (a divisor of DP) whose GPUs on every node are
    whole blocks of `engine_tp`; UserError when no number of replicas gives that."""
    for m in (m for m in range(1, dp + 1) if dp % m == 0):
        units = [range(u, u + m) for u in range(0, dp, m)]
        if all(len(gpus) % engine_tp == 0 for unit in units
               for gpus in _by_node(_unit_ranks(unit, tp, pp, cp, dp), gpn).values()):
            return m
    node, gpus = next(iter(_by_node(_unit_ranks(range(1), tp, pp, cp, dp), gpn).items()))
    raise UserError(f"rollout.tensor_parallel: engines of {engine_tp} GPUs cannot be cut from "
                    f"the data-parallel replicas' GPUs within each node (replica 0 has "
                    f"{len(gpus)} GPUs on node {node}; parallel.tensor_parallel x "
                    f"context_parallel = {tp * cp}): use a divisor or a multiple of "
                    f"{len(gpus)} that fits in a node")


def _blocks(ranks: list[int], gpn: int | None, engine_tp: int) -> list[tuple[int | None,
                                                                          tuple[int, ...]]]:
    """(node, local GPUs) of each engine block of a unit: the first block of each node,
    then the second, ... Without GPUs: one block per rank, in rank order."""
    if gpn is None:
        return [(None, (r,)) for r in ranks]
    per_node = {n: [tuple(g[i:i + engine_tp]) for i in range(0, len(g), engine_tp)]
                for n, g in _by_node(ranks, gpn).items()}
    depth = max(len(b) for b in per_node.values())
    return [(n, b[j]) for j in range(depth) for n, b in per_node.items() if j < len(b)]


def _split(first: int, count: int, parts: int) -> list[tuple[int, int]]:
    """[first, first + count) in `parts` contiguous shares, the first ones one larger."""
    size, extra = divmod(count, parts)
    out, start = [], first
    for i in range(parts):
        n = size + (i < extra)
        out.append((start, n))
        start += n
    return out


def place_engines(*, world: int, gpus_per_node: int | None, tp: int = 1, pp: int = 1,
                  cp: int = 1, placement: str = "leader", engine_tp: int | None = 1,
                  engines_per_replica: int = 1, num_prompts: int) -> Placement:
    """The engines of a run on `world` ranks.

    gpus_per_node: ranks (= GPUs) per node; None: no GPUs (CPU). engine_tp: GPUs per
    engine (rollout.tensor_parallel); None: the unit's GPUs on its first node.
    num_prompts: prompts per step (grpo.num_prompts_per_step). UserError (one line naming
    the keys) when the engines cannot be placed.
    """
    model_parallel = tp * pp * cp
    if world < 1 or world % model_parallel:
        raise UserError(f"parallel: world size {world} is not divisible by tensor_parallel x "
                        f"pipeline_parallel x context_parallel = {model_parallel}")
    dp = world // model_parallel
    if num_prompts % dp:
        raise UserError(f"grpo.num_prompts_per_step={num_prompts} does not split over {dp} "
                        "data-parallel replicas")
    if engines_per_replica < 1:
        raise UserError(f"rollout.engines_per_replica: must be >= 1, got {engines_per_replica}")
    if placement == "leader" and engines_per_replica != 1:
        raise UserError("rollout.engines_per_replica: more than one engine needs "
                        "rollout.placement=replica")
    if placement not in ("leader", "replica"):
        raise UserError(f"rollout.placement: {placement!r} is not one of ['leader', 'replica']")
    gpn = None if gpus_per_node is None else min(gpus_per_node, world)
    if gpn is not None and engine_tp is not None and not 1 <= engine_tp <= gpn:
        raise UserError(f"rollout.tensor_parallel: an engine of {engine_tp} GPUs does not fit "
                        f"in a {gpn}-GPU node (an engine never spans nodes)")
    per_rank = num_prompts // dp
    if placement == "leader":
        t = gpn if engine_tp is None and gpn is not None else engine_tp or 1
        blocks = [(None, (0,))] if gpn is None else [(0, tuple(range(t)))]
        return Placement((EngineSlot(0, 0, blocks[0][0], () if gpn is None else blocks[0][1],
                                     tuple(range(dp)), 0, num_prompts, tuple(range(world))),),
                         t, gpn)
    if gpn is None:
        m, t = 1, engine_tp or 1
    else:
        t = engine_tp or len(next(iter(_by_node(_unit_ranks(range(1), tp, pp, cp, dp),
                                                gpn).values())))
        m = _unit_size(t, gpn, tp, pp, cp, dp)
    engines: list[EngineSlot] = []
    for u in range(0, dp, m):
        ranks = _unit_ranks(range(u, u + m), tp, pp, cp, dp)
        blocks = _blocks(ranks, gpn, t)
        if engines_per_replica > len(blocks):
            raise UserError(f"rollout.engines_per_replica={engines_per_replica}: data-parallel "
                            f"replica {u} has room for {len(blocks)} engines of "
                            f"rollout.tensor_parallel={t} GPUs")
        if engines_per_replica > m * per_rank:
            raise UserError(f"rollout.engines_per_replica={engines_per_replica}: more engines "
                            f"than the {m * per_rank} prompts they share "
                            f"(grpo.num_prompts_per_step={num_prompts} over {dp} replicas)")
        shares = _split(u * per_rank, m * per_rank, engines_per_replica)
        for (node, gpus), (first, count) in zip(blocks, shares):
            host = gpus[0] if gpn is None else node * gpn + gpus[0]
            if _coords(host, tp, cp, dp)[1]:
                raise UserError(f"rollout.engines_per_replica={engines_per_replica}: an engine "
                                f"would be driven by rank {host}, a context-parallel rank > 0 "
                                "(refit gathers on context-parallel rank 0): use fewer engines "
                                "or a larger rollout.tensor_parallel")
            engines.append(EngineSlot(len(engines), host, node, () if gpn is None else gpus,
                                      tuple(range(u, u + m)), first, count, tuple(ranks)))
    return Placement(tuple(engines), t, gpn)


def placement_for(recipe, world: int, gpus_per_node: int | None) -> Placement:
    """`place_engines` with the recipe's settings; recipe: config.schema.Recipe."""
    par, ro = recipe.parallel, recipe.rollout
    return place_engines(world=world, gpus_per_node=gpus_per_node, tp=par.tensor_parallel,
                         pp=par.pipeline_parallel, cp=par.context_parallel,
                         placement=ro.placement, engine_tp=ro.tensor_parallel,
                         engines_per_replica=ro.engines_per_replica,
                         num_prompts=recipe.grpo.num_prompts_per_step)


def launcher_local_rank(env: dict[str, str], rank: int) -> int:
    """This rank's index on its node: torchrun's LOCAL_RANK, else srun's SLURM_LOCALID,
    else `rank` (one process)."""
    if "RANK" in env and "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"])
    if "SLURM_LOCALID" in env:
        return int(env["SLURM_LOCALID"])
    return rank


def check_rank_order(rank: int, local_rank: int, gpus_per_node: int) -> None:
    """UserError unless `rank` is local rank rank % gpus_per_node of its node (what the
    placement's GPU indices assume)."""
    if local_rank != rank % gpus_per_node:
        raise UserError(f"rollout: rank {rank} is local rank {local_rank} of its node, not "
                        f"{rank % gpus_per_node}: engine GPUs need ranks placed node by node "
                        f"with {gpus_per_node} per node (torchrun; srun --distribution=block)")


def check_visible(slot: EngineSlot, visible: int) -> None:
    """UserError when the host sees fewer GPUs than its engine's indices need
    (CUDA_VISIBLE_DEVICES or srun --gpus-per-task restricting each rank)."""
    if slot.local_gpus and max(slot.local_gpus) >= visible:
        raise UserError(f"rollout: the engine on rank {slot.host} needs GPUs "
                        f"{list(slot.local_gpus)} of its node but the rank sees {visible} "
                        "(every rank must see its node's GPUs: no srun --gpus-per-task / "
                        "--gpu-bind per rank)")
