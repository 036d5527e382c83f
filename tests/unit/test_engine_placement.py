"""Rollout-engine placement (maestro_megatron/plan/placement.py): golden tables worked
from megatron's rank order (rank = tp + TP (cp + CP (dp + DP pp)), rank r on local GPU
r % GPUs-per-node of node r // GPUs-per-node), the CPU case, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from maestro_megatron.config import load_recipe
from maestro_megatron.errors import UserError
from maestro_megatron.plan.placement import (
    check_rank_order,
    check_visible,
    launcher_local_rank,
    place_engines,
    placement_for,
)
from maestro_megatron.plan.roles import engine_shards, make_layout

ROOT = Path(__file__).resolve().parents[2]
R8, R70 = ROOT / "recipes" / "qwen3_8b_maestro.yaml", ROOT / "recipes" / "llama70b_maestro.yaml"


def table(placement):
    """(host, node, local GPUs, replicas served, first prompt, prompts) per engine."""
    return [(e.host, e.node, e.local_gpus, e.replicas, e.first_prompt, e.num_prompts)
            for e in placement.engines]


def test_one_node_tp2_dp4_replica_engines_on_their_replicas_gpus():
    p = place_engines(world=8, gpus_per_node=8, tp=2, placement="replica", engine_tp=2,
                      num_prompts=64)
    assert table(p) == [(2 * k, 0, (2 * k, 2 * k + 1), (k,), 16 * k, 16) for k in range(4)]
    assert [e.ranks for e in p.engines] == [(2 * k, 2 * k + 1) for k in range(4)]
    assert p.shards() == {r: 1 for r in range(8)}
    assert p.hosted_by(4).replicas == (2,) and p.hosted_by(5) is None
    assert p.serving(3) == (p.engines[3],)


def test_70b_layout_one_engine_per_node_splits_the_batch():
    kw = dict(world=32, gpus_per_node=8, tp=8, pp=4, placement="replica", engine_tp=8,
              num_prompts=64)
    every = tuple(range(8))
    # DP 1: the replica is all 32 GPUs, one pipeline stage per node
    assert table(place_engines(**kw)) == [(0, 0, every, (0,), 0, 64)]
    four = place_engines(**kw, engines_per_replica=4)
    assert table(four) == [(8 * n, n, every, (0,), 16 * n, 16) for n in range(4)]
    assert four.units() == [tuple(range(32))]  # every stage receives all 64 prompts' groups
    assert four.shards() == {r: 1 for r in range(32)}  # what the plan counts on every GPU
    half = place_engines(**(kw | dict(engine_tp=4)), engines_per_replica=2)  # nodes first
    assert table(half) == [(0, 0, (0, 1, 2, 3), (0,), 0, 32), (8, 1, (0, 1, 2, 3), (0,), 32, 32)]
    three = place_engines(**kw, engines_per_replica=3)  # balanced, contiguous
    assert table(three) == [(0, 0, every, (0,), 0, 22), (8, 1, every, (0,), 22, 21),
                            (16, 2, every, (0,), 43, 21)]


def test_two_nodes_of_four():
    p = place_engines(world=8, gpus_per_node=4, tp=2, placement="replica", engine_tp=2,
                      num_prompts=64)
    assert table(p) == [(0, 0, (0, 1), (0,), 0, 16), (2, 0, (2, 3), (1,), 16, 16),
                        (4, 1, (0, 1), (2,), 32, 16), (6, 1, (2, 3), (3,), 48, 16)]
    # TP 2 x PP 2 x DP 2: stage 0 on node 0, stage 1 on node 1; replica 0 is ranks 0, 1
    # (stage 0) and 4, 5 (stage 1); two engines each, one per node
    pp = place_engines(world=8, gpus_per_node=4, tp=2, pp=2, placement="replica",
                       engine_tp=2, engines_per_replica=2, num_prompts=64)
    assert table(pp) == [(0, 0, (0, 1), (0,), 0, 16), (4, 1, (0, 1), (0,), 16, 16),
                         (2, 0, (2, 3), (1,), 32, 16), (6, 1, (2, 3), (1,), 48, 16)]
    assert pp.units() == [(0, 1, 4, 5), (2, 3, 6, 7)]


def test_an_engine_wider_than_a_replica_serves_the_replicas_it_covers():
    kw = dict(world=8, gpus_per_node=8, tp=2, placement="replica", num_prompts=64)
    assert table(place_engines(**kw, engine_tp=4)) == [
        (0, 0, (0, 1, 2, 3), (0, 1), 0, 32), (4, 0, (4, 5, 6, 7), (2, 3), 32, 32)]
    assert table(place_engines(**kw, engine_tp=8)) == [
        (0, 0, tuple(range(8)), (0, 1, 2, 3), 0, 64)]
    # two stages of one replica on the same node: its GPUs need not be consecutive
    p = place_engines(world=8, gpus_per_node=8, tp=2, pp=2, placement="replica", engine_tp=4,
                      num_prompts=64)
    assert table(p) == [(0, 0, (0, 1, 4, 5), (0,), 0, 32), (2, 0, (2, 3, 6, 7), (1,), 32, 32)]


def test_leader_one_engine_on_node_0_for_the_whole_batch():
    p = place_engines(world=8, gpus_per_node=8, tp=2, placement="leader", engine_tp=2,
                      num_prompts=64)
    assert table(p) == [(0, 0, (0, 1), (0, 1, 2, 3), 0, 64)]
    assert p.units() == [tuple(range(8))] and p.shards() == {0: 1, 1: 1}
    big = place_engines(world=32, gpus_per_node=8, tp=8, pp=4, engine_tp=8, num_prompts=64)
    assert table(big) == [(0, 0, tuple(range(8)), (0,), 0, 64)]


def test_engine_width_defaults_to_the_replicas_gpus_on_a_node():
    assert place_engines(world=8, gpus_per_node=8, tp=2, placement="replica",
                         engine_tp=None, num_prompts=64).engine_tp == 2
    assert place_engines(world=32, gpus_per_node=8, tp=8, pp=4, placement="replica",
                         engine_tp=None, num_prompts=64).engine_tp == 8
    assert place_engines(world=8, gpus_per_node=8, tp=2, engine_tp=None,
                         num_prompts=64).engine_tp == 8  # leader: node 0's GPUs


def test_cpu_hosts_unchanged_and_no_device_indices():
    leader = place_engines(world=2, gpus_per_node=None, placement="leader", num_prompts=4)
    assert table(leader) == [(0, None, (), (0, 1), 0, 4)]
    replica = place_engines(world=2, gpus_per_node=None, placement="replica", num_prompts=4)
    assert table(replica) == [(0, None, (), (0,), 0, 2), (1, None, (), (1,), 2, 2)]
    assert replica.shards() == {}
    # TP 2 x PP 2: the replica's first rank; two engines on its first two ranks
    one = place_engines(world=4, gpus_per_node=None, tp=2, pp=2, placement="replica",
                        num_prompts=4)
    assert table(one) == [(0, None, (), (0,), 0, 4)] and one.units() == [(0, 1, 2, 3)]
    two = place_engines(world=4, gpus_per_node=None, tp=2, pp=2, placement="replica",
                        engines_per_replica=2, num_prompts=4)
    assert table(two) == [(0, None, (), (0,), 0, 2), (1, None, (), (0,), 2, 2)]
    # the engine's width does not move CPU engines (vLLM CPU runs on the host's cores)
    assert table(place_engines(world=2, gpus_per_node=None, placement="replica", engine_tp=2,
                               num_prompts=4)) == table(replica)


@pytest.mark.parametrize("kw, key", [
    (dict(engine_tp=3), "rollout.tensor_parallel: engines of 3 GPUs"),
    (dict(engine_tp=16), "rollout.tensor_parallel: an engine of 16 GPUs does not fit in a 8-GPU"),
    (dict(engine_tp=2, engines_per_replica=2), "rollout.engines_per_replica=2: data-parallel "
                                               "replica 0 has room for 1 engines"),
    # TP 2 x CP 2 x DP 2: replica 0 is ranks 0-3; ranks 2, 3 are context-parallel rank 1
    (dict(engine_tp=2, engines_per_replica=2, cp=2),
     "rollout.engines_per_replica=2: an engine would be driven by rank 2"),
    (dict(engine_tp=1, engines_per_replica=2, num_prompts=4), "more engines than the 1 prompts"),
    (dict(engine_tp=2, num_prompts=63), "grpo.num_prompts_per_step=63 does not split over 4"),
    (dict(engine_tp=2, placement="leader", engines_per_replica=2),
     "rollout.engines_per_replica: more than one engine needs rollout.placement=replica"),
])
def test_impossible_placements_name_the_key(kw, key):
    args = dict(world=8, gpus_per_node=8, tp=2, placement="replica", num_prompts=64) | kw
    with pytest.raises(UserError, match=key):
        place_engines(**args)


def test_the_recipes_and_the_plan_agree():
    r70 = load_recipe(R70)
    p70 = placement_for(r70, 32, 8)
    assert [e.host for e in p70.engines] == [0, 8, 16, 24] and p70.engine_tp == 8
    assert engine_shards(r70, make_layout(r70, 32, 8)) == p70.shards()
    r8 = load_recipe(R8)
    p8 = placement_for(r8, 8, 8)
    assert [(e.host, e.local_gpus) for e in p8.engines] == [(2 * k, (2 * k, 2 * k + 1))
                                                            for k in range(4)]
    assert engine_shards(r8, make_layout(r8, 8, 8)) == p8.shards()


def test_recipe_keys_are_validated():
    with pytest.raises(UserError, match="rollout.engines_per_replica: must be >= 1"):
        load_recipe(R8, ["rollout.engines_per_replica=0"])
    with pytest.raises(UserError, match="rollout.engines_per_replica: more than one engine"):
        load_recipe(R8, ["rollout.placement=leader", "rollout.engines_per_replica=2"])
    with pytest.raises(UserError, match="rollout.tensor_parallel: must be >= 1"):
        load_recipe(R8, ["rollout.tensor_parallel=0"])


def test_launcher_checks():
    assert launcher_local_rank({"RANK": "10", "LOCAL_RANK": "2"}, 10) == 2  # torchrun
    assert launcher_local_rank({"SLURM_PROCID": "10", "SLURM_LOCALID": "3"}, 10) == 3  # srun
    assert launcher_local_rank({}, 0) == 0  # one process
    check_rank_order(10, 2, 8)
    with pytest.raises(UserError, match="rank 10 is local rank 0 of its node, not 2"):
        check_rank_order(10, 0, 8)  # srun --distribution=cyclic
    slot = place_engines(world=8, gpus_per_node=8, tp=2, placement="replica", engine_tp=2,
                         num_prompts=64).engines[3]
    check_visible(slot, 8)
    with pytest.raises(UserError, match=r"needs GPUs \[6, 7\] of its node but the rank sees 1"):
        check_visible(slot, 1)  # CUDA_VISIBLE_DEVICES restricted to the rank's own GPU


def test_engine_gpus_go_to_vllm_as_device_ids():
    pytest.importorskip("vllm")
    from maestro_megatron.rollout import EngineFeatureUnsupported, VLLMEngine
    from maestro_megatron.rollout.vllm_engine import pinned_device_ids

    assert pinned_device_ids((6, 7), 2) == [6, 7]  # this vLLM has EngineArgs.device_ids
    for bad in ([6], [6, 6]):
        with pytest.raises(ValueError, match="need 2 distinct GPUs"):
            pinned_device_ids(bad, 2)
    with pytest.raises(EngineFeatureUnsupported, match="a CPU engine runs on the host"):
        VLLMEngine("unused", device_ids=[0])  # refused before any model is read
