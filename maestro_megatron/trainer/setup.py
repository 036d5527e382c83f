"""Everything a run needs before its first step, built once: `setup_run` -> `RunState`.

Order matters for reproducibility (seeded RNG streams): process groups, models (and
the warm-up), optimizer, scalarizer, data stream, resume from `latest`, preference
scorer, rollout engine (refit to the resumed weights), run writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from maestro_megatron.config import Recipe, recipe_to_dict
from maestro_megatron.megatron.conductor_replica import (
    average_gradients,
    check_replicas,
    sum_over_group,
)
from maestro_megatron.megatron.optimizer import build_optimizer
from maestro_megatron.megatron.parallel import ParallelGroups, init_distributed
from maestro_megatron.rewards import NEEDS_SCORER, reward_needs
from maestro_megatron.scalarizers import ReplicaSync, Scalarizer, build_scalarizer
from maestro_megatron.trainer.bootstrap import Models, prepare_models


@dataclass
class RunState:
    """A run between steps. `scalarizer` and `scorer` exist on last-stage ranks only,
    `engine` on the rank that hosts it, `writer` writes on the logging rank only."""

    recipe: Recipe
    groups: ParallelGroups
    run_dir: Path
    models: Models
    optimizer: object
    scheduler: object
    scalarizer: Scalarizer | None
    sync: ReplicaSync
    stream: object
    task_index: dict[str, int]
    start_step: int
    scorer: object
    engine: object
    writer: object
    prompts_per_rank: int
    share: object = None
    """This rank's `engine_share.RolloutShare`: the engines of its unit and their group."""
    async_saves: object = None
    """run.async_save: megatron-core's `AsyncCallsQueue` of background checkpoint writes."""

    @property
    def device(self) -> torch.device:
        return next(self.models.policy[0].parameters()).device

    @property
    def is_logger(self) -> bool:
        g = self.groups
        return g.is_last_stage and g.tp_rank == 0 and g.dp_rank == 0

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"


def prompts_per_rank(recipe: Recipe, groups: ParallelGroups) -> int:
    """Prompts per DP rank; groups never straddle ranks, mini-batches divide a rank's
    prompts and micro-batches a mini-batch's rows (a UserError naming the key: the
    rules `maestro plan` applies too)."""
    from maestro_megatron.plan.memory import prompts_per_rank as split

    return split(recipe.grpo, groups.dp_size)


def engine_placement(recipe: Recipe, groups: ParallelGroups):
    """Where the run's engines go (maestro_megatron/plan/placement.py): on a GPU, over
    the launcher's ranks per node (LOCAL_WORLD_SIZE / SLURM_NTASKS_PER_NODE), checked
    against this rank's local rank and the GPUs it sees; without CUDA, hosts only."""
    import os

    from maestro_megatron.plan.build import launch_world
    from maestro_megatron.plan.placement import (
        check_rank_order,
        check_visible,
        launcher_local_rank,
        placement_for,
    )

    per_node = None
    if torch.cuda.is_available():
        env = dict(os.environ)
        per_node = min(launch_world(env, torch.cuda.device_count())[1], groups.world_size)
        check_rank_order(groups.rank, launcher_local_rank(env, groups.rank), per_node)
    placement = placement_for(recipe, groups.world_size, per_node)
    slot = placement.hosted_by(groups.rank)
    if slot is not None and per_node is not None:
        check_visible(slot, torch.cuda.device_count())
    return placement


def hosts_engine(placement, groups: ParallelGroups) -> bool:
    """Whether this rank drives an engine of `placement` (the rank on its first GPU)."""
    return placement.hosted_by(groups.rank) is not None


def build_engine(recipe: Recipe, models: Models, slot=None):
    """The rollout engine, started from the run's HF directory; slot: its
    `EngineSlot` (the GPUs it runs on; none on CPU)."""
    from maestro_megatron.rollout import build_engine as build

    ro = recipe.rollout
    pinned = {"device_ids": list(slot.local_gpus)} if slot is not None and slot.local_gpus \
        else {}
    return build(ro.engine, str(models.engine_dir), seed=recipe.run.seed,
                 max_model_len=models.cfg.seq_length, tensor_parallel_size=ro.tensor_parallel,
                 gpu_memory_utilization=ro.gpu_memory_utilization,
                 enable_sleep_mode=ro.enable_sleep_mode, verbose=recipe.run.verbose, **pinned)


def check_tokenized_prompts(recipe: Recipe, run_dir: Path, groups: ParallelGroups) -> None:
    """Prompt lengths against the context, with the run's tokenizer, before any model
    is built (the tiny recipe's tokenizer is trained here first: about a second)."""
    from transformers import AutoTokenizer

    from maestro_megatron.data.prompts import load_data_config
    from maestro_megatron.trainer.bootstrap import prepare_tokenizer
    from maestro_megatron.trainer.preflight import check_prompt_lengths

    tokenizer = AutoTokenizer.from_pretrained(prepare_tokenizer(recipe, run_dir, groups))
    check_prompt_lengths(load_data_config(recipe.data), tokenizer, recipe)


def setup_run(recipe: Recipe) -> RunState:
    """Collective over all ranks: build or resume everything `train` needs."""
    from maestro_megatron.data.prompts import PromptStream, describe_splits, load_data_config
    from maestro_megatron.rollout import refit_policy
    from maestro_megatron.rollout.engine_guard import start_guard
    from maestro_megatron.trainer.checkpoint import load_checkpoint, resume_checkpoint
    from maestro_megatron.trainer.engine_share import make_share
    from maestro_megatron.trainer.outputs import RunWriter

    start_guard()  # what this rank starts (engine, checkpoint writer) dies with it
    run, g = recipe.run, recipe.grpo
    groups = init_distributed(recipe.parallel, recipe.model, seed=run.seed,
                              timeout_minutes=recipe.parallel.timeout_minutes)
    per_rank = prompts_per_rank(recipe, groups)
    placement = engine_placement(recipe, groups)  # a user error before any model
    share = make_share(placement, groups.rank, groups.world_size)
    run_dir = Path(run.output_dir)
    check_tokenized_prompts(recipe, run_dir, groups)
    # Before any model (user errors first): verified on every rank (CheckpointError:
    # corrupt, or `latest` names no directory); a fresh start refuses an earlier run's
    # metrics unless run.overwrite.
    latest = resume_checkpoint(run_dir / "checkpoints", fallback=run.resume_fallback)
    if latest is None:
        RunWriter.check_fresh_start(run_dir, overwrite=run.overwrite)
    models = prepare_models(recipe, run_dir, groups)
    device = next(models.policy[0].parameters()).device
    optimizer, scheduler = build_optimizer(g, recipe.parallel, recipe.precision, models.policy,
                                           run.num_steps * g.num_minibatches * g.ppo_epochs)
    scalarizer = build_scalarizer(recipe, d_model=models.cfg.hidden_size, device=device) \
        if groups.is_last_stage else None
    sync = ReplicaSync(average_gradients=lambda m: average_gradients(m, groups.dp),
                       check_replicas=lambda m: check_replicas(m, groups.tp),
                       sum_over_dp=lambda t: sum_over_group(t, groups.dp))
    records = load_data_config(recipe.data)
    if groups.rank == 0:
        print(describe_splits(recipe.data), flush=True)
    task_index = {t: i for i, t in enumerate(sorted({r.task for r in records}))}
    stream = PromptStream(records, g.num_prompts_per_step, seed=run.seed)
    start_step = 0
    if latest is not None:
        state = load_checkpoint(latest, model_chunks=models.policy, optimizer=optimizer,
                                scheduler=scheduler, groups=groups, scalarizer=scalarizer,
                                verify=False)  # just verified
        start_step = state["step"]
        stream.load_state_dict(state["extra"]["data"])
    scorer = None
    if groups.is_last_stage and NEEDS_SCORER in reward_needs(recipe.rewards.components):
        from maestro_megatron.megatron.scorer_placement import place_scorer
        from maestro_megatron.scorers import build_scorer

        scorer = place_scorer(recipe.rewards.pref, recipe.memory, groups,
                              lambda: build_scorer(recipe.rewards.pref))
    steps_left = start_step < run.num_steps
    engine = build_engine(recipe, models, placement.hosted_by(groups.rank)) \
        if hosts_engine(placement, groups) and steps_left else None
    if start_step > 0 and steps_left:  # the engine started from pre-resume weights
        refit_policy(engine, models.policy, models.cfg, groups,
                     recipe.rollout.refit_bucket_mb * 1024 * 1024,
                     all_replicas=recipe.rollout.placement == "replica")
    logger = groups.is_last_stage and groups.tp_rank == 0 and groups.dp_rank == 0
    writer = RunWriter(run_dir, recipe_to_dict(recipe), enabled=logger,
                       total_steps=run.num_steps, start_step=start_step, progress=run.progress,
                       overwrite=run.overwrite)
    saves = None
    if run.async_save:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        saves = AsyncCallsQueue()
    return RunState(recipe, groups, run_dir, models, optimizer, scheduler, scalarizer, sync,
                    stream, task_index, start_step, scorer, engine, writer, per_rank, share,
                    saves)
