"""Cross-field recipe rules. Each failure is a ValueError "dotted.key: message"."""

from __future__ import annotations

from maestro_megatron.config.schema import ModelConfig, ParallelConfig, Recipe


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {message}")


def _one_of(value, allowed, key: str) -> None:
    _check(value in allowed, key, f"{value!r} is not one of {sorted(map(str, allowed))}")


def check_layout(model: ModelConfig, parallel: ParallelConfig, world_size: int | None = None):
    """Layout rules that must hold before any model is built (DESIGN.md section 4)."""
    tp, pp, cp = parallel.tensor_parallel, parallel.pipeline_parallel, parallel.context_parallel
    vpp = parallel.virtual_pipeline_parallel
    for key, value in (("tensor_parallel", tp), ("pipeline_parallel", pp),
                       ("context_parallel", cp)):
        _check(value >= 1, f"parallel.{key}", f"must be >= 1, got {value}")
    _check(model.num_attention_heads % model.num_query_groups == 0, "model.num_query_groups",
           f"{model.num_query_groups} does not divide model.num_attention_heads="
           f"{model.num_attention_heads}")
    if model.kv_channels is None:
        _check(model.hidden_size % model.num_attention_heads == 0, "model.hidden_size",
               f"{model.hidden_size} is not divisible by model.num_attention_heads="
               f"{model.num_attention_heads} (or set model.kv_channels)")
    _check(model.num_attention_heads % tp == 0, "parallel.tensor_parallel",
           f"{tp} does not divide model.num_attention_heads={model.num_attention_heads}")
    _check(model.num_query_groups % tp == 0, "parallel.tensor_parallel",
           f"{tp} does not divide model.num_query_groups={model.num_query_groups}")
    _check(model.ffn_hidden_size % tp == 0, "parallel.tensor_parallel",
           f"{tp} does not divide model.ffn_hidden_size={model.ffn_hidden_size}")
    if vpp is None:
        _check(model.num_layers % pp == 0, "parallel.pipeline_parallel",
               f"{pp} does not divide model.num_layers={model.num_layers}")
    else:
        _check(vpp >= 1, "parallel.virtual_pipeline_parallel", f"must be >= 1, got {vpp}")
        _check(pp > 1, "parallel.virtual_pipeline_parallel", "needs parallel.pipeline_parallel > 1")
        _check(model.num_layers % (pp * vpp) == 0, "parallel.virtual_pipeline_parallel",
               f"parallel.pipeline_parallel={pp} x {vpp} does not divide "
               f"model.num_layers={model.num_layers}")
    if parallel.sequence_parallel:
        _check(tp > 1, "parallel.sequence_parallel", "needs parallel.tensor_parallel > 1")
    if world_size is not None:
        _check(world_size % (tp * pp * cp) == 0, "parallel",
               f"world size {world_size} is not divisible by tensor_parallel x "
               f"pipeline_parallel x context_parallel = {tp * pp * cp}")


def _check_templates(recipe: Recipe) -> None:
    from maestro_megatron.conductor.templates import simplex_violation

    templates = recipe.conductor.templates
    if templates is None:
        return
    num_k = len(recipe.rewards.components)
    _check(len(templates) >= 1, "conductor.templates", "needs at least one template")
    for j, row in enumerate(templates):
        key = f"conductor.templates[{j}]"
        _check(len(row) == num_k, key, f"has {len(row)} weights, rewards.components has {num_k}")
        problem = simplex_violation(row)
        _check(problem is None, key, str(problem))


def validate_recipe(recipe: Recipe) -> None:
    """Raise ValueError("key: message") on the first rule a recipe breaks."""
    from maestro_megatron.rewards import REWARDS
    from maestro_megatron.scalarizers import SCALARIZERS

    m, g, r, c = recipe.model, recipe.grpo, recipe.rewards, recipe.conductor
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "num_query_groups", "vocab_size", "seq_length"):
        _check(getattr(m, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(m, key)}")
    check_layout(m, recipe.parallel)
    _check(recipe.parallel.timeout_minutes >= 1, "parallel.timeout_minutes", "must be >= 1")
    from maestro_megatron.weights.registry import MAPPINGS

    _one_of(m.architecture, set(MAPPINGS), "model.architecture")
    _one_of(recipe.precision.dtype, {"fp32", "bf16", "fp16"}, "precision.dtype")
    _one_of(recipe.precision.fp8, {None, "hybrid", "e4m3"}, "precision.fp8")
    _one_of(recipe.precision.transformer_impl, {"auto", "local", "transformer_engine"},
            "precision.transformer_impl")
    if recipe.precision.fp8 is not None:
        _check(recipe.precision.transformer_impl != "local", "precision.fp8",
               "needs the Transformer Engine layer spec, not precision.transformer_impl=local")

    _one_of(recipe.rewards.pref.placement, {"rank", "tp_leader"}, "rewards.pref.placement")
    mem = recipe.memory
    _one_of(mem.recompute, {"none", "selective", "full"}, "memory.recompute")
    _check(mem.recompute_num_layers >= 1, "memory.recompute_num_layers",
           f"must be >= 1, got {mem.recompute_num_layers}")
    _check(mem.logprob_chunk_tokens >= 0, "memory.logprob_chunk_tokens",
           f"must be >= 0, got {mem.logprob_chunk_tokens}")

    _check(g.group_size >= 2, "grpo.group_size", f"must be >= 2 for group advantages, "
           f"got {g.group_size}")
    _check(g.num_prompts_per_step >= 1, "grpo.num_prompts_per_step", "must be >= 1")
    _check(g.micro_batch_size >= 1, "grpo.micro_batch_size", "must be >= 1")
    _check(g.num_minibatches >= 1, "grpo.num_minibatches", "must be >= 1")
    _check(g.ppo_epochs >= 1, "grpo.ppo_epochs", "must be >= 1")
    _check(g.num_prompts_per_step % g.num_minibatches == 0, "grpo.num_minibatches",
           f"{g.num_minibatches} does not divide grpo.num_prompts_per_step="
           f"{g.num_prompts_per_step}")
    _check(0.0 <= g.eps_low < 1.0, "grpo.eps_low", f"must be in [0, 1), got {g.eps_low}")
    _check(g.eps_high >= 0.0, "grpo.eps_high", f"must be >= 0, got {g.eps_high}")
    if g.dual_clip is not None:
        _check(g.dual_clip > 1.0, "grpo.dual_clip", f"must be > 1, got {g.dual_clip}")
    _one_of(g.loss_agg, {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"},
            "grpo.loss_agg")
    _one_of(g.kl_kind, {"k1", "k2", "k3"}, "grpo.kl_kind")
    _check(g.kl_coef >= 0.0, "grpo.kl_coef", f"must be >= 0, got {g.kl_coef}")
    _check(g.lr > 0.0, "grpo.lr", f"must be > 0, got {g.lr}")
    _one_of(g.lr_decay_style, {"constant", "linear", "cosine"}, "grpo.lr_decay_style")

    _check(len(r.components) >= 1, "rewards.components", "needs at least one component")
    _check(len(set(r.components)) == len(r.components), "rewards.components",
           f"duplicate names in {list(r.components)}")
    for name in r.components:
        _one_of(name, set(REWARDS), "rewards.components")
    _one_of(r.normalization, {"group", "batch", "none"}, "rewards.normalization")
    _check(r.std_eps >= 0, "rewards.std_eps", f"must be >= 0, got {r.std_eps}")
    _one_of(r.ent.mode, {"maximize", "minimize", "target"}, "rewards.ent.mode")
    _one_of(r.ppl.proxy, {"reference", "policy"}, "rewards.ppl.proxy")
    from maestro_megatron.rewards import NEEDS_SCORER, reward_needs

    if NEEDS_SCORER in reward_needs(r.components):
        from maestro_megatron.scorers import SCORERS

        _one_of(r.pref.scorer, set(SCORERS), "rewards.pref.scorer")
    from maestro_megatron.rollout.registry import ENGINES

    _one_of(recipe.rollout.engine, set(ENGINES), "rollout.engine")
    _one_of(recipe.rollout.placement, {"leader", "replica"}, "rollout.placement")
    _check(recipe.rollout.tensor_parallel >= 1, "rollout.tensor_parallel",
           f"must be >= 1, got {recipe.rollout.tensor_parallel}")
    _check(recipe.rollout.engines_per_replica >= 1, "rollout.engines_per_replica",
           f"must be >= 1, got {recipe.rollout.engines_per_replica}")
    _check(recipe.rollout.engines_per_replica == 1 or recipe.rollout.placement == "replica",
           "rollout.engines_per_replica", "more than one engine needs rollout.placement=replica")
    from maestro_megatron.algorithms import ADVANTAGE_ESTIMATORS

    _one_of(g.advantage_estimator, set(ADVANTAGE_ESTIMATORS), "grpo.advantage_estimator")
    _check(r.len.max_tokens >= 1, "rewards.len.max_tokens", "must be >= 1")
    _check(r.len.target_tokens >= 0, "rewards.len.target_tokens", "must be >= 0")

    s = recipe.scalarizer
    _one_of(s.name, set(SCALARIZERS), "scalarizer.name")
    SCALARIZERS[s.name].check_recipe(recipe)

    _check(c.tau > 0.0, "conductor.tau", f"must be > 0, got {c.tau}")
    _check(0.0 <= c.rho <= 1.0, "conductor.rho", f"must be in [0, 1], got {c.rho}")
    _check_templates(recipe)
    num_actions = len(c.templates) if c.templates is not None else len(r.components)
    _check(0.0 <= c.p_min < 1.0 / num_actions, "conductor.p_min",
           f"must be in [0, 1/J) with J={num_actions} actions, got {c.p_min}")
    _check(c.lr > 0.0, "conductor.lr", f"must be > 0, got {c.lr}")
    _check(c.update_every >= 1, "conductor.update_every", "must be >= 1")
    _check(c.epochs >= 1, "conductor.epochs", "must be >= 1")
    _one_of(c.buffer, {"clear", "window"}, "conductor.buffer")
    _check(c.window_size >= 1, "conductor.window_size", "must be >= 1")

    ro = recipe.rollout
    _check(ro.temperature > 0.0, "rollout.temperature", f"must be > 0, got {ro.temperature}")
    _check(0.0 < ro.top_p <= 1.0, "rollout.top_p", f"must be in (0, 1], got {ro.top_p}")
    _check(ro.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    _check(ro.max_new_tokens < m.seq_length, "rollout.max_new_tokens",
           f"{ro.max_new_tokens} leaves no room for a prompt in model.seq_length="
           f"{m.seq_length}")
    _check(ro.refit_bucket_mb >= 1, "rollout.refit_bucket_mb", "must be >= 1")
    _one_of(ro.sleep_level, {1, 2}, "rollout.sleep_level")
    _one_of(recipe.data.prompt_format, {"plain", "chat"}, "data.prompt_format")
    _check(recipe.warmup.num_steps >= 0, "warmup.num_steps", "must be >= 0")
    _check(recipe.run.num_steps >= 1, "run.num_steps", f"must be >= 1, got {recipe.run.num_steps}")
    _one_of(r.on_nonfinite, {"error", "skip"}, "rewards.on_nonfinite")
    _check(recipe.run.keep_checkpoints >= 1, "run.keep_checkpoints", "must be >= 1")
    _one_of(recipe.run.algorithm, {"grpo", "sft"}, "run.algorithm")
    if recipe.run.algorithm == "sft":
        _check(recipe.warmup.num_steps == 0, "warmup.num_steps", "must be 0 with "
               "run.algorithm=sft (the run is itself supervised: set its steps in run.num_steps)")
        _check(recipe.sft.lr > 0.0, "sft.lr", f"must be > 0, got {recipe.sft.lr}")
        _check(recipe.sft.batch_size >= 1, "sft.batch_size", "must be >= 1")
        _check("{reference}" in recipe.sft.answer_template, "sft.answer_template",
               "must contain {reference}")
