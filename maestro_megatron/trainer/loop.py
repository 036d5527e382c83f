"""`maestro train`: the MAESTRO loop of DESIGN.md section 2, one named step per line.

rollout (vLLM, leader) -> policy / reference / proxy forward -> the K rewards ->
scalarize (Conductor or baseline) -> group advantages -> GRPO update -> meta buffer and
Conductor update every M steps -> refit -> metrics, checkpoint.
Works under torchrun (or srun) with any TP x PP x DP the world size allows.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from maestro_megatron.conductor import (
    MetaBuffer,
    conductor_from_config,
    conductor_update,
    schedule_from_config,
)
from maestro_megatron.config import Recipe, recipe_to_dict
from maestro_megatron.megatron.conductor_replica import average_gradients, check_replicas
from maestro_megatron.megatron.forward import SequenceBatch
from maestro_megatron.megatron.parallel import ParallelGroups, destroy_distributed, init_distributed
from maestro_megatron.megatron.train_step import build_optimizer, grpo_train_step
from maestro_megatron.rewards import build_scalarizer
from maestro_megatron.trainer.bootstrap import prepare_models
from maestro_megatron.trainer.rollouts import broadcast_rollouts, collect_rollouts
from maestro_megatron.trainer.steps import forward_step, reward_step, scalarize_step, step_metrics


class Timer:
    """Wall-clock seconds per named stage: `with timer("rollout"): ...`."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[f"timing/{name}"] = time.perf_counter() - self.start

        return _Span()


def _check_batch(recipe: Recipe, groups: ParallelGroups) -> int:
    """Prompts per DP rank; groups never straddle ranks and micro-batches divide rows."""
    g = recipe.grpo
    if g.num_prompts_per_step % groups.dp_size:
        raise ValueError(f"grpo.num_prompts_per_step={g.num_prompts_per_step} does not split "
                         f"over {groups.dp_size} data-parallel ranks")
    per_rank = g.num_prompts_per_step // groups.dp_size
    if (per_rank * g.group_size) % g.micro_batch_size:
        raise ValueError(f"grpo.micro_batch_size={g.micro_batch_size} does not divide the "
                         f"{per_rank * g.group_size} responses of each data-parallel rank")
    return per_rank


def _build_engine(recipe: Recipe, engine_dir: Path, seq_length: int):
    from maestro_megatron.rollout import build_engine

    ro = recipe.rollout
    return build_engine(ro.engine, str(engine_dir), seed=recipe.run.seed,
                        max_model_len=seq_length, tensor_parallel_size=ro.tensor_parallel,
                        gpu_memory_utilization=ro.gpu_memory_utilization,
                        enable_sleep_mode=ro.enable_sleep_mode)


def refit(engine, models, groups: ParallelGroups, bucket_mb: int) -> dict[str, float]:
    """Push the policy into the engine (leader); every rank runs the gather."""
    from maestro_megatron.rollout import refit_engine
    from maestro_megatron.weights.gather import iter_hf_weights
    from maestro_megatron.weights.registry import get_mapping

    weights = iter_hf_weights(models.policy, get_mapping(models.cfg.architecture), models.cfg,
                              groups)
    if engine is None:
        for _ in weights:
            pass
        return {}
    try:
        return refit_engine(engine, weights, bucket_mb * 1024 * 1024).metrics()
    finally:
        for _ in weights:  # keep the other ranks' collectives matched on an error
            pass


def train(recipe: Recipe) -> Path:
    """Run the recipe; returns the run directory."""
    from maestro_megatron.data.prompts import PromptStream, load_data_config
    from maestro_megatron.rollout import SamplingConfig
    from maestro_megatron.trainer.checkpoint import latest_checkpoint, load_checkpoint
    from maestro_megatron.trainer.outputs import RunWriter

    run, g = recipe.run, recipe.grpo
    groups = init_distributed(recipe.parallel, recipe.model, seed=run.seed)
    per_rank = _check_batch(recipe, groups)
    run_dir = Path(run.output_dir)
    models = prepare_models(recipe, run_dir, groups)
    device = next(models.policy[0].parameters()).device
    optimizer, scheduler = build_optimizer(g, recipe.parallel, recipe.precision, models.policy,
                                           run.num_steps)
    components = recipe.rewards.components
    use_conductor = recipe.scalarizer.name == "conductor"
    conductor = cond_opt = None  # the Conductor lives on last-stage ranks only
    if use_conductor and groups.is_last_stage:
        conductor = conductor_from_config(recipe.conductor, models.cfg.hidden_size,
                                          len(components)).to(device)
        cond_opt = torch.optim.Adam(conductor.parameters(), lr=recipe.conductor.lr)
    scalarizer = None if use_conductor else build_scalarizer(
        recipe.scalarizer.name, components, component=recipe.scalarizer.component,
        dirichlet_alpha=recipe.scalarizer.dirichlet_alpha)
    schedule, buffer = schedule_from_config(recipe.conductor), MetaBuffer()
    records = load_data_config(recipe.data)
    task_ids = {t: i for i, t in enumerate(sorted({r.task for r in records}))}
    stream = PromptStream(records, g.num_prompts_per_step, seed=run.seed)
    start_step = 0
    ckpt_root = run_dir / "checkpoints"
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        state = load_checkpoint(latest, model_chunks=models.policy, optimizer=optimizer,
                                scheduler=scheduler, groups=groups, conductor=conductor,
                                conductor_optimizer=cond_opt,
                                meta_buffer=buffer if conductor is not None else None)
        start_step = state["step"]
        stream.load_state_dict(state["extra"]["data"])
    leader = groups.rank == 0
    logger = groups.is_last_stage and groups.tp_rank == 0 and groups.dp_rank == 0
    scorer = None
    if groups.is_last_stage and "pref" in components:
        from maestro_megatron.scorers import build_scorer

        scorer = build_scorer(recipe.rewards.pref)
    steps_left = start_step < run.num_steps
    engine = _build_engine(recipe, models.engine_dir, models.cfg.seq_length) \
        if leader and steps_left else None
    if start_step > 0 and steps_left:  # the engine started from pre-resume weights
        refit(engine, models, groups, recipe.rollout.refit_bucket_mb)
    num_global = g.num_prompts_per_step * g.group_size
    offset_prompts = groups.dp_rank * per_rank
    writer = RunWriter(run_dir, recipe_to_dict(recipe), enabled=logger,
                       total_steps=run.num_steps, start_step=start_step, progress=run.progress)
    try:
        for step in range(start_step + 1, run.num_steps + 1):
            timer = Timer()
            step_start = time.perf_counter()
            prompts = stream.next_batch()
            with timer("rollout"):
                sampling = SamplingConfig.from_rollout(recipe.rollout, seed=run.seed + step)
                batch = collect_rollouts(engine, prompts, models.tokenizer, sampling,
                                         g.group_size, recipe.data.prompt_format) if leader \
                    else None
                batch = broadcast_rollouts(batch)
                local = batch.groups_slice(offset_prompts, per_rank)
            with timer("forward"):
                fwd = forward_step(models, local, recipe, groups, models.tokenizer.pad_token_id)
            metrics: dict[str, float] = {}
            rows, seq = fwd.sequences.tokens.shape
            advantages = torch.zeros(rows)
            if groups.is_last_stage:
                with timer("rewards"):
                    rewards = reward_step(recipe, local, fwd, scorer, models.cfg.vocab_size)
                    sc = scalarize_step(recipe, rewards, fwd, scalarizer, conductor, step=step,
                                        num_global=num_global,
                                        offset=offset_prompts * g.group_size)
                    advantages = sc.advantages
                    step_stats, task_weights = step_metrics(recipe, local, sc, conductor,
                                                            fwd.policy.h, fwd.policy.logprobs,
                                                            groups)
                    metrics.update(step_stats)
            zeros = torch.zeros(rows, seq, device=device)
            extras = {"advantages": advantages.to(device),
                      "old_logprobs": fwd.policy.logprobs if fwd.policy is not None else zeros,
                      "ref_logprobs": fwd.reference.logprobs if fwd.reference is not None
                      else zeros}
            with timer("train"):
                metrics.update(grpo_train_step(
                    models.policy, optimizer, scheduler,
                    SequenceBatch(fwd.sequences.tokens.to(device),
                                  fwd.sequences.response_mask.to(device), extras=extras),
                    g, groups, vocab_size=models.cfg.vocab_size))
            if use_conductor and groups.is_last_stage:
                with timer("conductor"):
                    tasks = torch.tensor([task_ids[t] for t in local.per_response(local.tasks)])
                    buffer.append(fwd.policy.h, sc.actions, sc.advantages, tasks)
                    if schedule.is_update_step(step):
                        metrics.update(conductor_update(
                            conductor, cond_opt, buffer, schedule, recipe.conductor.ent_coef,
                            grad_sync=lambda c: average_gradients(c, groups.dp)))
                        check_replicas(conductor, groups.tp)
            with timer("refit"):
                metrics.update(refit(engine, models, groups, recipe.rollout.refit_bucket_mb))
            metrics.update(timer.times)
            metrics["timing/step"] = time.perf_counter() - step_start
            if logger:
                writer.log(step, metrics)
                writer.log_conductor_weights(step, task_weights, list(components))
            if (run.save_every and step % run.save_every == 0) or step == run.num_steps:
                save(ckpt_root, step, models, optimizer, scheduler, groups, conductor, cond_opt,
                     buffer, stream, run.keep_checkpoints)
    finally:
        writer.close()
        if engine is not None:
            engine.close()
    export_final(run_dir, models, groups, conductor if logger else None, components)
    if logger:
        from maestro_megatron.trainer.plots import plot_conductor_weights, plot_rewards

        plot_conductor_weights(run_dir)
        plot_rewards(run_dir)
    destroy_distributed()
    return run_dir


def save(ckpt_root, step, models, optimizer, scheduler, groups, conductor, cond_opt, buffer,
         stream, keep: int) -> None:
    from maestro_megatron.trainer.checkpoint import prune_checkpoints, save_checkpoint

    save_checkpoint(ckpt_root, step, model_chunks=models.policy, optimizer=optimizer,
                    scheduler=scheduler, groups=groups, conductor=conductor,
                    conductor_optimizer=cond_opt,
                    meta_buffer=buffer if conductor is not None else None,
                    extra={"data": stream.state_dict()})
    if groups.rank == 0:
        prune_checkpoints(ckpt_root, keep)


def export_final(run_dir: Path, models, groups: ParallelGroups, conductor, components) -> None:
    """The trained policy as an HF directory (transformers / vLLM) and the Conductor."""
    import shutil

    from maestro_megatron.trainer.bootstrap import _barrier
    from maestro_megatron.trainer.explain import save_conductor
    from maestro_megatron.weights.hf_model import export_hf

    out = run_dir / "hf_final"
    if groups.rank == 0 and out.exists():
        shutil.rmtree(out)
    _barrier()
    special = {"bos_token_id": models.tokenizer.bos_token_id,
               "eos_token_id": models.tokenizer.eos_token_id,
               "pad_token_id": models.tokenizer.pad_token_id}
    export_hf(models.policy, models.cfg, groups, out, tokenizer_dir=models.tokenizer_dir,
              base_config=special)
    if conductor is not None:
        save_conductor(run_dir / "conductor.pt", conductor, components)
