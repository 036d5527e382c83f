"""megatron-core's optimizer for the policy: construction, LR schedule, and the CPU
(no Apex / no Transformer Engine) workarounds its checkpoint loading needs."""

from __future__ import annotations

import torch

from maestro_megatron.config.schema import GRPOConfig, ParallelConfig, PrecisionConfig


def build_optimizer(grpo: GRPOConfig, parallel: ParallelConfig, precision: PrecisionConfig,
                    model_chunks: list[torch.nn.Module], num_steps: int):
    """megatron-core Adam (distributed when the recipe says so) and its LR scheduler.

    Returns (optimizer, scheduler). The scheduler warms up linearly over
    grpo.lr_warmup_steps, then decays (constant | linear | cosine) to grpo.min_lr at
    num_steps.
    """
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    config = OptimizerConfig(
        optimizer="adam", lr=grpo.lr, min_lr=grpo.min_lr, weight_decay=grpo.weight_decay,
        clip_grad=grpo.clip_grad, adam_beta1=grpo.adam_beta1, adam_beta2=grpo.adam_beta2,
        adam_eps=grpo.adam_eps, bf16=precision.dtype == "bf16" and torch.cuda.is_available(),
        fp16=precision.dtype == "fp16" and torch.cuda.is_available(),
        params_dtype=model_chunks[0].config.params_dtype,
        use_distributed_optimizer=parallel.use_distributed_optimizer)
    optimizer = get_megatron_optimizer(config, model_chunks)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if grpo.lr_warmup_steps else grpo.lr, max_lr=grpo.lr,
        min_lr=grpo.min_lr, lr_warmup_steps=grpo.lr_warmup_steps,
        lr_decay_steps=max(num_steps, grpo.lr_warmup_steps + 1),
        lr_decay_style=grpo.lr_decay_style, start_wd=grpo.weight_decay,
        end_wd=grpo.weight_decay, wd_incr_steps=max(num_steps, 1), wd_incr_style="constant")
    return optimizer, scheduler


def ensure_optimizer_state(optimizer) -> None:
    """Allocate the Adam state of a fresh distributed optimizer before loading into it.

    Without Apex/TE (CPU: torch Adam), megatron-core 0.16.1's
    `DistributedOptimizer.state_dict()`, which `sharded_state_dict(is_loading=True)`
    calls first, asserts that the inner optimizer already holds a "step". Megatron's own
    remedy (used for FSDP) is one optimizer step on zero gradients; it runs here at lr 0
    so that not even weight decay touches the parameters (they are loaded next anyway).
    """
    from megatron.core.optimizer import distrib_optimizer as dopt

    if dopt.HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, dopt.DistributedOptimizer) or opt.optimizer.state:
            continue
        lrs = [group["lr"] for group in opt.optimizer.param_groups]
        for group in opt.optimizer.param_groups:
            group["lr"] = 0.0
        opt._init_optimizer_states_with_dummy_values()
        for group, lr in zip(opt.optimizer.param_groups, lrs):
            group["lr"] = lr


def restore_adam_steps(optimizer) -> None:
    """Put the checkpoint's Adam step back into torch Adam's per-parameter state.

    megatron-core 0.16.1 stores the distributed optimizer's step in its param groups and
    keeps the per-parameter "step" tensor as a LocalNonpersistentObject, i.e. the
    *current* (pre-load) tensor, which `load_state_dict` then copies back over the
    loaded step, and its `load_state_dict` hands ONE step tensor to every parameter,
    which torch's foreach Adam then increments once per parameter and step. Without
    Apex/TE (torch Adam) either would corrupt the bias correction; each parameter gets
    its own tensor holding the checkpoint's step here.
    """
    from megatron.core.optimizer import distrib_optimizer as dopt

    if dopt.HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, dopt.DistributedOptimizer):
            continue
        for group in opt.optimizer.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                state = opt.optimizer.state.get(param, {})
                if "step" in state:
                    old = state["step"]
                    state["step"] = torch.full_like(old, float(group["step"]))
