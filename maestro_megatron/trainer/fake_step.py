"""The trainer's own step at a recipe's real shapes, on a fake GPU, for one rank role.

`python -m maestro_megatron.trainer.fake_step RECIPE --role last [--nodes N
--gpus-per-node 8 --gpu-memory 80] [--json FILE] [key.sub=value ...]` builds the policy,
the frozen reference and megatron's (distributed) optimizer with the project's own model
code, feeds `loop.learn_step` (forwards, rewards, scalarizer, advantages, the GRPO update,
the scalarizer's hooks: what `maestro train` runs between rollout and refit) two steps
(the report is the second's: the first update allocates Adam's moments) of
synthetic rollouts of the recipe's batch with every sequence at its longest
(prompt + max_new_tokens = model.seq_length), and reports the live GPU bytes per stage.

This process plays one rank of the layout (`--role first | middle | last` pipeline stage;
the rank with TP, DP and CP coordinate 0 of that stage) over torch's `fake` process
group: collectives complete without peers (an all-gather copies this rank's tensor),
so every rank's own work and its tensors' devices are real, the data is not. GPU
tensors are meta tensors (`megatron/fake_gpu.py`): a host tensor reaching a GPU op or a
collective raises as it would on a GPU.

What differs from the GPU run, by necessity here: no Transformer Engine on this machine,
so the local layer spec (torch norms, unfused core attention with its [b*heads, s, s]
scores) with sequence parallelism and FP8 off; the rollouts are synthetic (no engine:
rollout and refit are not run); the tokenizer is the tiny recipe's (512 ids, within any
vocabulary), and a `pref` scorer whose model_path does not exist is replaced by the
built-in embedding scorer on the host (the reward model's memory is `maestro plan`'s
arithmetic).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROLES = ("first", "middle", "last")
LOCAL_SPEC = ["parallel.sequence_parallel=false", "precision.transformer_impl=local",
              "precision.fp8=null"]


def role_rank(role: str, tp: int, pp: int, dp_cp: int) -> int:
    """Global rank of `role`'s rank (TP/CP/DP coordinate 0) in megatron's default rank
    order (tp fastest, then cp, dp, pp): first stage 0, last (PP-1) * TP * DP*CP,
    middle stage PP // 2."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {ROLES}")
    if role == "middle" and pp < 3:
        raise ValueError(f"no middle pipeline stage with pipeline_parallel={pp}")
    stage = {"first": 0, "middle": pp // 2, "last": pp - 1}[role]
    return stage * tp * dp_cp


def synthetic_rollouts(recipe, tokenizer, num_prompts: int, seed: int = 0):
    """num_prompts prompts x G responses, each row at its longest: a prompt of
    seq_length - max_new_tokens ids and a response of max_new_tokens ids (truncated),
    drawn from the tokenizer's ids; texts are the decoded ids (the reward inputs)."""
    import torch

    from maestro_megatron.trainer.rollouts import RolloutBatch

    m, g = recipe.model, recipe.grpo
    new = recipe.rollout.max_new_tokens
    prompt_len = m.seq_length - new
    if prompt_len < 1:
        raise ValueError(f"rollout.max_new_tokens={new} leaves no room for a prompt in "
                         f"model.seq_length={m.seq_length}")
    gen = torch.Generator().manual_seed(seed)
    high = len(tokenizer)

    def ids(n):
        return torch.randint(3, high, (n,), generator=gen).tolist()

    prompts = [ids(prompt_len) for _ in range(num_prompts)]
    responses = [ids(new) for _ in range(num_prompts * g.group_size)]
    texts = ["<think>" + tokenizer.decode(r[: new // 2]) + "</think><answer>"
             + tokenizer.decode(r[new // 2:]) + "</answer>" for r in responses]
    return RolloutBatch(
        prompts=[tokenizer.decode(p) for p in prompts],
        references=["a reference answer"] * num_prompts,
        tasks=["fake"] * num_prompts, prompt_ids=prompts, response_ids=responses,
        response_texts=texts, truncated=[True] * len(responses), group_size=g.group_size,
        rollout_logprobs=[[-1.0] * new for _ in responses])


def _host_groups_are_fake() -> None:
    """megatron-core also makes gloo groups (host-side collectives of the distributed
    optimizer); gloo cannot join a fake world, so they are fake groups too."""
    import torch.distributed as dist

    new_group = dist.new_group

    def fake_new_group(*args, backend=None, **kwargs):
        return new_group(*args, backend=None if backend == "gloo" else backend, **kwargs)

    dist.new_group = fake_new_group


def run_fake_step(recipe, *, role: str, nodes: int, gpus_per_node: int,
                  gpu_memory_gb: float, num_steps: int = 2) -> dict:
    """`num_steps` learn_steps of `recipe` as `role`'s rank; -> a report of the last
    one (bytes per stage, host reads)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from maestro_megatron.megatron.fake_gpu import enable_fake_gpu

    check = enable_fake_gpu(gpus_per_node, int(gpu_memory_gb * 1e9))
    p = recipe.parallel
    world = nodes * gpus_per_node
    model_parallel = p.tensor_parallel * p.pipeline_parallel * p.context_parallel
    if world % model_parallel:
        raise ValueError(f"{world} GPUs do not divide into TP x PP x CP = {model_parallel}")
    dp = world // model_parallel
    rank = role_rank(role, p.tensor_parallel, p.pipeline_parallel, dp * p.context_parallel)
    # meta is the fake GPU: its tensors go to the fake backend too (batched p2p asks).
    dist.init_process_group("cpu:fake,cuda:fake,meta:fake", store=FakeStore(), rank=rank,
                            world_size=world)
    _host_groups_are_fake()
    from transformers import AutoTokenizer

    from maestro_megatron.data.prompts import builtin_texts
    from maestro_megatron.data.tokenizer import train_chat_tokenizer
    from maestro_megatron.megatron.conductor_replica import (
        average_gradients,
        check_replicas,
        sum_over_group,
    )
    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.megatron.offload import offload
    from maestro_megatron.megatron.optimizer import build_optimizer
    from maestro_megatron.megatron.parallel import init_distributed
    from maestro_megatron.rewards import NEEDS_SCORER, reward_needs
    from maestro_megatron.scalarizers import ReplicaSync, build_scalarizer
    from maestro_megatron.trainer.bootstrap import Models
    from maestro_megatron.trainer.loop import Timer, learn_step
    from maestro_megatron.trainer.setup import RunState, prompts_per_rank

    groups = init_distributed(p, recipe.model, seed=recipe.run.seed)
    per_rank = prompts_per_rank(recipe, groups)
    tmp = Path(tempfile.mkdtemp(prefix="maestro_fake_step_"))
    tokenizer = AutoTokenizer.from_pretrained(
        train_chat_tokenizer(builtin_texts(), tmp / "tokenizer", vocab_size=512))
    cfg, g = recipe.model, recipe.grpo
    stage = dict(pp_rank=groups.pp_rank, pp_size=groups.pp_size)
    start = time.perf_counter()
    with check.phase("build/policy"):
        policy = build_model(cfg, p, recipe.precision, wrap_ddp=True,
                             memory_cfg=recipe.memory, **stage)
    with check.phase("build/reference"):
        reference = build_model(cfg, p, recipe.precision, freeze=True, **stage)
        if recipe.memory.offload_reference:  # as trainer/bootstrap.py does
            offload(reference)
    with check.phase("build/optimizer"):
        optimizer, scheduler = build_optimizer(g, p, recipe.precision, policy,
                                               recipe.run.num_steps)
    device = next(policy[0].parameters()).device
    models = Models(cfg, policy, reference, tokenizer, tmp / "tokenizer", tmp)
    scalarizer = build_scalarizer(recipe, d_model=cfg.hidden_size, device=device) \
        if groups.is_last_stage else None
    sync = ReplicaSync(average_gradients=lambda m: average_gradients(m, groups.dp),
                       check_replicas=lambda m: check_replicas(m, groups.tp),
                       sum_over_dp=lambda t: sum_over_group(t, groups.dp))
    scorer = None
    pref = recipe.rewards.pref
    if groups.is_last_stage and NEEDS_SCORER in reward_needs(recipe.rewards.components):
        from maestro_megatron.megatron.scorer_placement import place_scorer
        from maestro_megatron.scorers import build_scorer

        if pref.model_path is not None and not Path(pref.model_path).exists():
            pref = replace(pref, scorer="embedding_similarity", model_path=None)
        scorer = place_scorer(pref, recipe.memory, groups,
                              lambda: build_scorer(pref, device="cpu"))
    state = RunState(recipe, groups, tmp, models, optimizer, scheduler, scalarizer, sync,
                     None, {"fake": 0}, 0, scorer, None, None, per_rank)
    local = synthetic_rollouts(recipe, tokenizer, per_rank, seed=rank)
    built = check.live
    for step in range(1, num_steps + 1):  # the report is the last step's (steady state:
        check.host_reads.clear()          # Adam's moments exist from the first update on)
        learn_step(state, step, local, Timer(step, around=check.phase), {})
    params = sum(t.numel() for chunk in policy for t in chunk.parameters())
    return {
        "recipe_overrides": LOCAL_SPEC, "role": role, "rank": rank, "world_size": world,
        "layout": {"tp": groups.tp_size, "pp": groups.pp_size, "dp": groups.dp_size,
                   "vpp": p.virtual_pipeline_parallel, "cp": groups.cp_size},
        "is_last_stage": groups.is_last_stage, "params_per_gpu": params,
        "live_after_build": built, "live_after_step": check.live,
        "phases": {k: {"start": v.start, "peak": v.peak} for k, v in check.phases.items()},
        "peak": max(v.peak for v in check.phases.values()),
        "host_reads": dict(check.host_reads), "micro_batch_size": g.micro_batch_size,
        "rows_per_rank": per_rank * g.group_size, "seq_length": cfg.seq_length,
        "wall_s": time.perf_counter() - start, "num_steps": num_steps,
    }


def format_report(report: dict) -> str:
    """The report as a short table (GB = 1e9 bytes)."""
    gb = 1e9
    lay = report["layout"]
    lines = [f"fake-GPU step, role {report['role']} (rank {report['rank']} of "
             f"{report['world_size']}; TP {lay['tp']} PP {lay['pp']} DP {lay['dp']}"
             f"{' VPP ' + str(lay['vpp']) if lay['vpp'] else ''}), "
             f"{report['params_per_gpu']:,} parameters on this GPU, "
             f"{report['rows_per_rank']} rows of {report['seq_length']} tokens, "
             f"micro-batch {report['micro_batch_size']}",
             f"{'stage':<24}{'live at start GB':>18}{'peak GB':>10}"]
    for name, ph in report["phases"].items():
        lines.append(f"{name:<24}{ph['start'] / gb:>18.2f}{ph['peak'] / gb:>10.2f}")
    lines.append(f"peak {report['peak'] / gb:.2f} GB; host reads of GPU data: "
                 f"{sum(report['host_reads'].values())} "
                 f"({len(report['host_reads'])} places); {report['wall_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from maestro_megatron.config import load_recipe

    parser = argparse.ArgumentParser(prog="python -m maestro_megatron.trainer.fake_step",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--role", default="last", choices=ROLES)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--steps", type=int, default=2,
                        help="learn steps; the report is the last one's (default 2: the "
                        "first update allocates Adam's moments)")
    parser.add_argument("--prompts-per-rank", type=int, default=None,
                        help="this rank's prompts (default: the recipe's batch); with "
                        "it, one mini-batch: an optimizer step's memory does not depend "
                        "on how many there are")
    args = parser.parse_intermixed_args(argv)
    overrides = [*args.overrides, *LOCAL_SPEC]
    if args.prompts_per_rank is not None:
        base = load_recipe(args.recipe, overrides).parallel
        dp = args.nodes * args.gpus_per_node // (
            base.tensor_parallel * base.pipeline_parallel * base.context_parallel)
        overrides += [f"grpo.num_prompts_per_step={dp * args.prompts_per_rank}",
                      "grpo.num_minibatches=1"]
    recipe = load_recipe(args.recipe, overrides)
    report = run_fake_step(recipe, role=args.role, nodes=args.nodes,
                           gpus_per_node=args.gpus_per_node, gpu_memory_gb=args.gpu_memory,
                           num_steps=args.steps)
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
