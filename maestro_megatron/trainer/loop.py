"""`maestro train`: the MAESTRO loop of DESIGN.md section 2, one call per arrow.

rollout (vLLM) -> policy / reference / proxy forward -> the K rewards -> scalarize
(the recipe's scalarizer: the Conductor or a baseline) -> group advantages -> GRPO
update -> scalarizer observe/update (the Conductor's outer loop) -> refit -> metrics,
checkpoint. Works under torchrun (or srun) with any TP x PP x DP the world allows.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from maestro_megatron.config import Recipe
from maestro_megatron.data.packing import SequenceBatch, minibatch_rows
from maestro_megatron.megatron.train_step import grpo_train_step
from maestro_megatron.rollout import SamplingConfig, refit_policy
from maestro_megatron.scalarizers import sequence_kl, step_uniforms
from maestro_megatron.trainer.checkpoint import finish_saves, save_step
from maestro_megatron.trainer.colocation import sleep_engine, wake_engine
from maestro_megatron.trainer.engine_share import share_rollouts
from maestro_megatron.trainer.faults import enter_step, fault_point
from maestro_megatron.trainer.finish import finish_run
from maestro_megatron.trainer.rollouts import collect_rollouts
from maestro_megatron.trainer.setup import RunState, setup_run
from maestro_megatron.trainer.signals import (
    StopRequest,
    child_pids,
    exit_on_signals,
    stop_children,
)
from maestro_megatron.trainer.steps import (
    forward_step,
    policy_forward_needed,
    reward_step,
    rollout_records,
    scalarize_step,
    step_metrics,
)


class Timer:
    """Wall-clock seconds per named stage: `with timer("rollout"): ...`. An exception
    raised inside a stage (a dead engine, a collective that timed out) carries a note
    naming the stage and the step, so the failure says where the job stopped.
    `around(name)`, when given, is a context entered around each stage too (the
    fake-GPU step's memory phases)."""

    def __init__(self, step: int = 0, around=None) -> None:
        self.step = step
        self.times: dict[str, float] = {}
        self.around = around

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            with self.around(name) if self.around is not None else nullcontext():
                yield
        except Exception as exc:
            exc.add_note(f"maestro: raised in stage '{name}' of step {self.step}; the last "
                         "complete checkpoint is intact and the same command resumes")
            raise
        self.times[f"timing/{name}"] = time.perf_counter() - start


def train(recipe: Recipe) -> Path | None:
    """Run the recipe; returns the run directory, or None when a stop was requested
    (SIGUSR1 / MAESTRO_STOP_FILE: every rank finishes the step, the checkpoint is
    written, and the job script requeues). SIGTERM, SIGINT and errors stop the rollout
    engine and every process it started (trainer/signals.py). run.algorithm sft runs
    the SFT baseline instead (trainer/sft.py: no rollouts, rewards or scalarizer)."""
    if recipe.run.algorithm == "sft":
        from maestro_megatron.trainer.sft import train_sft

        return train_sft(recipe)
    state, before, stop = None, child_pids(), StopRequest()
    with exit_on_signals():
        try:
            state = setup_run(recipe)
            for step in range(state.start_step + 1, recipe.run.num_steps + 1):
                saved = run_step(state, step)
                if step < recipe.run.num_steps and stop.poll():
                    if not saved:
                        save_step(state, step)
                    finish_saves(state)  # a background write is named before the exit
                    if state.groups.rank == 0:
                        print(f"stopped after step {step} as requested: checkpoint saved; "
                              "the same command resumes", flush=True)
                    return None
            finish_saves(state)  # before the children (a background writer) are stopped
        finally:
            stop.close()
            if state is not None:
                state.writer.close()
                if state.engine is not None:
                    state.engine.close()
            stop_children(keep=before)  # what the engine left (or a failed setup started)
    return finish_run(state)


def run_step(state: RunState, step: int) -> bool:
    """One MAESTRO iteration (collective over all ranks); True if it saved a checkpoint."""
    recipe, groups, models = state.recipe, state.groups, state.models
    timer, start, metrics = Timer(step), time.perf_counter(), {}
    enter_step(step)  # the step MAESTRO_FAULT's testing hooks compare (trainer/faults.py)
    finish_saves(state, blocking=False)  # run.async_save: name the writes that are done
    with timer("rollout"):
        local = rollout_step(state, step)
    sleep_engine(state.engine, recipe.rollout.sleep_level, timer)  # trainer/colocation.py
    task_weights, records = learn_step(state, step, local, timer, metrics)
    wake_engine(state.engine, ["weights"], timer)  # what the refit writes
    with timer("refit"):
        fault_point("refit")
        metrics.update(refit_policy(state.engine, models.policy, models.cfg, groups,
                                    recipe.rollout.refit_bucket_mb * 1024 * 1024,
                                    all_replicas=recipe.rollout.placement == "replica"))
    wake_engine(state.engine, ["kv_cache"], timer)  # the buckets are gone: the next rollout's
    metrics.update(timer.times)
    metrics["timing/step"] = time.perf_counter() - start
    if state.is_logger:
        state.writer.log(step, metrics)
        state.writer.log_conductor_weights(step, task_weights, list(recipe.rewards.components))
        if recipe.run.log_rollouts:
            state.writer.log_rollouts(step, records)
    run = recipe.run
    if (run.save_every and step % run.save_every == 0) or step == run.num_steps:
        save_step(state, step)
        return True
    return False


def learn_step(state: RunState, step: int, local, timer: Timer, metrics: dict):
    """Everything between the rollout and the refit, on this rank's groups: forwards,
    rewards, scalarizer, advantages, the policy update, the scalarizer's observe/update
    hooks; the step's metrics go into `metrics`. -> (per-task weights, rollout records),
    both None off the logging stage. The fake-GPU step (trainer/fake_step.py) calls it
    as the trainer does, with synthetic rollouts."""
    recipe, groups, models, g = state.recipe, state.groups, state.models, state.recipe.grpo
    policy_first = policy_forward_needed(recipe)
    with timer("forward"):
        fwd = forward_step(models, local, recipe, groups, models.tokenizer.pad_token_id,
                           times=timer.times, policy=policy_first)
    sc = records = task_weights = None
    if groups.is_last_stage:
        with timer("rewards"):
            rewards = reward_step(recipe, local, fwd, state.scorer, models.cfg.vocab_size,
                                  times=timer.times)
        with timer("scalarize"):  # the scalarizer's weights, R and advantages
            tasks = local.per_response(local.tasks)
            sc = scalarize_step(
                state.scalarizer, rewards,
                logprobs=fwd.policy.logprobs if policy_first else None,
                ref_logprobs=fwd.reference.logprobs, response_mask=fwd.sequences.response_mask,
                h=fwd.policy.h if policy_first else None, step=step, grpo=g,
                normalization=recipe.rewards.normalization,
                std_eps=recipe.rewards.std_eps,
                uniforms=step_uniforms(recipe.scalarizer.seed, step,
                                       g.num_prompts_per_step * g.group_size,
                                       groups.dp_rank * state.prompts_per_rank * g.group_size,
                                       local.num_responses),
                tasks=tuple(tasks),
                task_ids=torch.tensor([state.task_index[t] for t in tasks]),
                reduce_sum=state.sync.sum_over_dp)
    if groups.is_last_stage and policy_first:
        with timer("metrics"):
            task_weights, records = metrics_step(state, local, sc, fwd, metrics)
    with timer("train"):
        passes = []
        metrics.update(train_step(state, fwd, sc, local.truncated,
                                  outputs=None if policy_first else passes))
    if groups.is_last_stage and not policy_first:
        with timer("metrics"):  # from the update's own pass: the weights before it
            fwd.policy = passes[0]
            sc.kl_seq = sequence_kl(fwd.policy.logprobs, fwd.reference.logprobs,
                                    fwd.sequences.response_mask, g.kl_kind)
            task_weights, records = metrics_step(state, local, sc, fwd, metrics)
    if sc is not None:
        with timer("scalarizer_update"):
            state.scalarizer.observe(sc.context, sc.used, sc.advantages)
            metrics.update(state.scalarizer.update(step, state.sync))
    return task_weights, records


def metrics_step(state: RunState, local, sc, fwd, metrics: dict):
    """The step's merged metrics into `metrics`; -> (per-task weights, rollout records
    or None). Collective over data-parallel ranks."""
    recipe, groups = state.recipe, state.groups
    step_stats, task_weights = step_metrics(recipe, local, sc, fwd, groups)
    metrics.update(step_stats)
    records = None
    if recipe.run.log_rollouts:
        records = rollout_records(recipe, local, sc, groups,
                                  groups.dp_rank * state.prompts_per_rank)
    return task_weights, records


def rollout_step(state: RunState, step: int):
    """G responses per prompt -> this DP rank's groups. Each engine samples its share of
    its unit's prompts (maestro_megatron/plan/placement.py; leader: rank 0's engine, the
    whole batch; replica: the replica's engines, its own groups); the shares are
    broadcast within the unit only (trainer/engine_share.py). Per-request seeds come
    from (run seed, step, global prompt index): the same responses however it is split."""
    recipe, groups, per_rank = state.recipe, state.groups, state.prompts_per_rank
    prompts = state.stream.next_batch()
    share, batch = state.share, None
    if state.engine is not None:
        first, count = share.slot.first_prompt, share.slot.num_prompts
        sampling = SamplingConfig.from_rollout(recipe.rollout, seed=recipe.run.seed + step)
        fault_point("engine")
        batch = collect_rollouts(state.engine, prompts[first:first + count],
                                 state.models.tokenizer, sampling, recipe.grpo.group_size,
                                 recipe.data, first_index=first)
        fault_point("rollout")
    return share_rollouts(batch, share, groups.rank, groups.dp_rank * per_rank, per_rank)


def train_step(state: RunState, fwd, sc, truncated: list[bool],
               outputs: list | None = None) -> dict[str, float]:
    """The GRPO policy update on this rank's rows (advantages live on the last stage):
    ppo_epochs x num_minibatches optimizer steps, old log-probs from the rollout policy
    (`fwd.policy`; without it the update is on-policy and uses its own, detached).
    Returns the metrics' mean over the optimizer steps (train/lr: the last one);
    outputs: see `grpo_train_step` (one optimizer step only)."""
    g, device, (rows, seq) = state.recipe.grpo, state.device, fwd.sequences.tokens.shape
    zeros = torch.zeros(rows, seq, device=device)
    advantages = sc.advantages if sc is not None else torch.zeros(rows, device=device)
    extras = {"advantages": advantages.to(device),
              "ref_logprobs": fwd.reference.logprobs if fwd.reference is not None else zeros}
    if outputs is None:
        extras["old_logprobs"] = fwd.policy.logprobs if fwd.policy is not None else zeros
    mask = fwd.sequences.response_mask
    if g.mask_truncated:
        mask = mask * (1.0 - torch.tensor(truncated, dtype=mask.dtype, device=mask.device))[:, None]
    batch = SequenceBatch(fwd.sequences.tokens, mask, extras=extras)  # on `device` already
    parts = [None] if g.num_minibatches == 1 else minibatch_rows(
        state.prompts_per_rank, g.group_size, g.num_minibatches,
        state.groups.dp_rank * state.prompts_per_rank)
    steps = []
    for _ in range(g.ppo_epochs):
        for part in parts:
            steps.append(grpo_train_step(state.models.policy, state.optimizer,
                                         state.scheduler,
                                         batch if part is None else batch.rows(part), g,
                                         state.groups, vocab_size=state.models.cfg.vocab_size,
                                         outputs=outputs, logprob_chunk_tokens=(
                                             state.recipe.memory.logprob_chunk_tokens)))
            fault_point("train")  # MAESTRO_FAULT=train@N dies after the first one
    metrics = {k: sum(m[k] for m in steps) / len(steps) for k in steps[0]}
    metrics["train/lr"] = steps[-1]["train/lr"]
    if g.mask_truncated:
        metrics["train/truncated_masked"] = float(sum(truncated))
    return metrics
