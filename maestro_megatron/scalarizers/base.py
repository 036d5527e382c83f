"""The scalarizer protocol: how a reward vector becomes one scalar per response.

R[i, j] = w[i, j] . r~[i, j, :] - beta * KL_seq[i, j]        (DESIGN.md section 3)

A scalarizer is called once per step on this rank's responses with a
`ScalarizerContext` and returns the weights it used (and its actions, if it has any).
After the policy update the trainer calls `observe` (this step's advantages) and
`update` (the outer loop: the Conductor's two-timescale REINFORCE step; a stage-level
bandit's weight move). `state_dict` / `load_state_dict` go into every checkpoint.
The Conductor is one registry entry among the baselines: the trainer has no branch
for it. A new baseline is one class with `@register_scalarizer("name")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

UNIFORM_STREAM_MULT = 1_000_003


@dataclass(frozen=True)
class ScalarizerContext:
    """This rank's B responses at one policy step (B = its groups x G, in group order)."""

    step: int
    """Policy step, counted from 1."""
    rewards: torch.Tensor
    """[B, K] raw reward components."""
    normalized: torch.Tensor
    """[B, K] components after per-component normalisation (the r~ that is weighted)."""
    uniforms: torch.Tensor
    """[B] float64 in [0, 1): this rank's slice of the step's one global uniform stream,
    so every random draw is the same whatever the data-parallel split."""
    group_size: int
    """G: responses per prompt."""
    tasks: tuple[str, ...] = ()
    """[B] task labels (empty when unknown)."""
    task_ids: torch.Tensor | None = None
    """[B] long ids of `tasks` over the run's task vocabulary."""
    h: torch.Tensor | None = None
    """[B, d_model] final-layernorm output at the last response token (detached)."""


@dataclass(frozen=True)
class Scalarization:
    """What a scalarizer decided for the B responses."""

    weights: torch.Tensor
    """[B, K] weights used for each response."""
    actions: torch.Tensor | None = None
    """[B] long actions (None for scalarizers without actions)."""


def _no_sync(module: torch.nn.Module) -> None:
    return None


def _local_sum(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class ReplicaSync:
    """Plumbing a learning scalarizer needs from the parallel layer (passed in, so the
    scalarizer itself never touches torch.distributed)."""

    average_gradients: Callable[[torch.nn.Module], None] = _no_sync
    """All-reduce a module's gradients to their data-parallel mean."""
    check_replicas: Callable[[torch.nn.Module], None] = _no_sync
    """Raise if the tensor-parallel replicas of a module differ."""
    sum_over_dp: Callable[[torch.Tensor], torch.Tensor] = _local_sum
    """A tensor summed over the data-parallel ranks (batch-level statistics)."""


class Scalarizer:
    """Base class with no-op hooks; subclasses implement `__call__` and `from_recipe`."""

    needs_hidden: bool = False
    """Whether `__call__` reads ctx.h (the policy forward's hidden states)."""

    def __init__(self, num_components: int):
        self.num_components = num_components

    @classmethod
    def from_recipe(cls, recipe, *, d_model: int, device: torch.device | str = "cpu"):
        """Build from a `Recipe` (config dataclasses only; no I/O)."""
        raise NotImplementedError

    @classmethod
    def check_recipe(cls, recipe) -> None:
        """Load-time checks of this scalarizer's recipe options: raise
        ValueError("dotted.key: message") (default: none)."""

    def __call__(self, ctx: ScalarizerContext) -> Scalarization:
        raise NotImplementedError

    def report_weights(self, ctx: ScalarizerContext, used: Scalarization) -> torch.Tensor:
        """[B, K] weights reported per task category (default: the ones used)."""
        return used.weights

    def metric_sums(self, ctx: ScalarizerContext) -> dict[str, float]:
        """Per-response metrics summed over this rank's B responses (the trainer takes
        the global mean); e.g. {"conductor/policy_entropy": ...}."""
        return {}

    def observe(self, ctx: ScalarizerContext, used: Scalarization,
                advantages: torch.Tensor) -> None:
        """After the step: the group advantages [B] the weights produced."""

    def update(self, step: int, sync: ReplicaSync = ReplicaSync()) -> dict[str, float]:
        """The outer-loop update after policy step `step`; returns metrics."""
        return {}

    def state_dict(self) -> dict:
        """Everything needed to resume bit for bit (this data-parallel rank's share)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`."""

    def export(self, run_dir, components: tuple[str, ...]) -> None:
        """Write what inference needs beside the exported policy (default: nothing)."""

    @classmethod
    def reshard_states(cls, states: list[dict], dp_rank: int, dp_size: int) -> dict:
        """This rank's state when a checkpoint of len(states) DP ranks resumes under
        dp_size ranks (default: the state is replicated, take rank 0's)."""
        return states[0]


SCALARIZERS: dict[str, type[Scalarizer]] = {}


def register_scalarizer(name: str):
    """Class decorator: make a scalarizer available as `scalarizer.name: <name>`."""

    def deco(cls: type[Scalarizer]) -> type[Scalarizer]:
        if name in SCALARIZERS and SCALARIZERS[name] is not cls:
            raise ValueError(f"scalarizer {name!r} is already registered")
        SCALARIZERS[name] = cls
        cls.name = name
        return cls
    return deco


def build_scalarizer(recipe, *, d_model: int, device: torch.device | str = "cpu") -> Scalarizer:
    """The scalarizer `recipe.scalarizer.name` names, built from the recipe."""
    name = recipe.scalarizer.name
    if name not in SCALARIZERS:
        raise KeyError(f"scalarizer {name!r} is not registered (known: {sorted(SCALARIZERS)})")
    return SCALARIZERS[name].from_recipe(recipe, d_model=d_model, device=device)


def step_uniforms(seed: int, step: int, num_global: int, offset: int, count: int
                  ) -> torch.Tensor:
    """Rows [offset, offset + count) of the step's global stream of num_global float64
    uniforms, drawn from (seed, step): identical on every rank, whatever the layout."""
    gen = torch.Generator().manual_seed(seed * UNIFORM_STREAM_MULT + step)
    uniforms = torch.rand(num_global, generator=gen, dtype=torch.float64)
    return uniforms[offset:offset + count]
