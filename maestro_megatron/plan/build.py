"""Plumbing around the memory math: a recipe (and its reward model's config.json) ->
`Plan`, and the go / no-go that `maestro train` asks before it builds anything."""

from __future__ import annotations

import json
from pathlib import Path

from maestro_megatron.config.schema import Recipe
from maestro_megatron.errors import UserError
from maestro_megatron.plan.memory import GB, Plan, RewardModelShape, plan_memory
from maestro_megatron.plan.params import hf_parameters
from maestro_megatron.plan.roles import make_layout


def _default_scorer_path(recipe: Recipe) -> Path | None:
    if recipe.rewards.pref.scorer != "embedding_similarity":
        return None
    try:
        from maestro_megatron.scorers.embedding import default_model_path

        return default_model_path()
    except ImportError:
        return None


def _read_config(path: Path | None) -> dict | None:
    try:
        return json.loads((path / "config.json").read_text()) if path else None
    except (OSError, ValueError):
        return None


def reward_model_shape(recipe: Recipe) -> RewardModelShape | None:
    """The preference reward model's size (None when no component needs a scorer):
    from rewards.pref.model_path/config.json when readable, else from
    rewards.pref.num_parameters with the policy's width for its activations."""
    from maestro_megatron.rewards import NEEDS_SCORER, reward_needs

    if NEEDS_SCORER not in reward_needs(recipe.rewards.components):
        return None
    pref, m = recipe.rewards.pref, recipe.model
    path = Path(pref.model_path) if pref.model_path else _default_scorer_path(recipe)
    config = _read_config(path)
    count = hf_parameters(config) if config else None
    if count is not None:
        h, layers = config["hidden_size"], config["num_hidden_layers"]
        heads = config["num_attention_heads"]
        groups = config.get("num_key_value_heads") or heads
        d = config.get("head_dim") or h // heads
        cache = config.get("model_type") != "bert" and config.get("use_cache", True)
        return RewardModelShape(count, h, config["intermediate_size"],
                                2 * layers * groups * d * 2 if cache else 0,
                                config.get("max_position_embeddings"),
                                f"{path / 'config.json'}")
    if pref.num_parameters is None:
        where = f"{path}/config.json is not readable" if path else "no rewards.pref.model_path"
        raise UserError(f"rewards.pref.num_parameters: maestro plan needs the reward model's "
                        f"parameter count ({where}); set rewards.pref.num_parameters")
    d = m.kv_channels or m.hidden_size // m.num_attention_heads
    return RewardModelShape(pref.num_parameters, m.hidden_size, m.ffn_hidden_size,
                            2 * m.num_layers * m.num_query_groups * d * 2, None,
                            "rewards.pref.num_parameters; scoring sized at the policy's shape")


def resolve_impl(recipe: Recipe, transformer_impl: str | None = None) -> str:
    """The layer spec to size: the argument, else the recipe's; auto -> Transformer
    Engine (what a GPU with TE builds)."""
    impl = transformer_impl or recipe.precision.transformer_impl
    return "transformer_engine" if impl == "auto" else impl


def plan_recipe(recipe: Recipe, nodes: int = 1, gpus_per_node: int = 8,
                gpu_memory_gb: float = 80.0, *, world_size: int | None = None,
                transformer_impl: str | None = None) -> Plan:
    """The memory plan of `recipe` on nodes x gpus_per_node GPUs (or `world_size`) of
    gpu_memory_gb (decimal GB) each."""
    if gpu_memory_gb <= 0:
        raise UserError(f"--gpu-memory must be > 0, got {gpu_memory_gb}")
    world = world_size if world_size is not None else nodes * gpus_per_node
    layout = make_layout(recipe, world, gpus_per_node)
    return plan_memory(recipe, layout, int(gpu_memory_gb * GB),
                       transformer_impl=resolve_impl(recipe, transformer_impl),
                       reward_model=reward_model_shape(recipe))


def check_train_memory(recipe: Recipe, *, world_size: int, gpus_per_node: int,
                       gpu_memory_bytes: int | None,
                       transformer_impl: str | None = None) -> str | None:
    """`maestro train`'s gate: the plan's verdict line, or UserError (one line naming
    the phase and the largest item) when the layout cannot fit. gpu_memory_bytes None
    (no CUDA: the CPU recipes): None, never a refusal."""
    from maestro_megatron.plan.report import failure_message, verdict

    if gpu_memory_bytes is None:
        return None
    plan = plan_recipe(recipe, gpus_per_node=max(1, min(gpus_per_node, world_size)),
                       gpu_memory_gb=gpu_memory_bytes / GB, world_size=world_size,
                       transformer_impl=transformer_impl)
    if not plan.fits:
        raise UserError(failure_message(plan) + " (maestro plan RECIPE shows every item)")
    return verdict(plan)


def _leading_int(text: str | None) -> int | None:
    digits = ""
    for ch in (text or ""):
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def launch_world(env: dict[str, str], device_count: int) -> tuple[int, int]:
    """(world size, GPUs per node) of this launch: torchrun's WORLD_SIZE /
    LOCAL_WORLD_SIZE, else srun's SLURM_NTASKS / SLURM_NTASKS_PER_NODE ("8(x4)"), else
    one process; GPUs per node default to the visible devices."""
    world = _leading_int(env.get("WORLD_SIZE")) or _leading_int(env.get("SLURM_NTASKS")) or 1
    per_node = (_leading_int(env.get("LOCAL_WORLD_SIZE"))
                or _leading_int(env.get("SLURM_NTASKS_PER_NODE")) or device_count or 1)
    return world, min(per_node, world)


def train_gate(recipe: Recipe) -> str | None:
    """`maestro train`'s check on this machine: None without CUDA (never refuses),
    else `check_train_memory` with the launcher's world and GPU 0's total memory."""
    import importlib.util
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    world, per_node = launch_world(dict(os.environ), torch.cuda.device_count())
    impl = None
    if recipe.precision.transformer_impl == "auto":
        impl = "transformer_engine" if importlib.util.find_spec("transformer_engine") \
            else "local"
    return check_train_memory(recipe, world_size=world, gpus_per_node=per_node,
                              gpu_memory_bytes=torch.cuda.get_device_properties(0).total_memory,
                              transformer_impl=impl)
