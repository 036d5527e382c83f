"""Baselines without a learned weighting: equal, single-component and random weights."""

from __future__ import annotations

import torch

from maestro_megatron.scalarizers.base import (
    Scalarization,
    Scalarizer,
    ScalarizerContext,
    register_scalarizer,
)


@register_scalarizer("equal")
class EqualScalarizer(Scalarizer):
    """Fixed uniform weights w = 1/K for every response."""

    @classmethod
    def from_recipe(cls, recipe, *, d_model: int, device="cpu"):
        return cls(len(recipe.rewards.components))

    def __call__(self, ctx: ScalarizerContext) -> Scalarization:
        rows = ctx.rewards.shape[0]
        return Scalarization(torch.full((rows, self.num_components), 1.0 / self.num_components))


@register_scalarizer("single")
class SingleScalarizer(Scalarizer):
    """All weight on one component (e.g. ent with mode=minimize for EM-GRPO)."""

    def __init__(self, num_components: int, index: int):
        super().__init__(num_components)
        if not 0 <= index < num_components:
            raise ValueError(f"single scalarizer: component index {index} not in "
                             f"[0, {num_components})")
        self.index = index

    @classmethod
    def check_recipe(cls, recipe) -> None:
        components = list(recipe.rewards.components)
        if recipe.scalarizer.component not in components:
            raise ValueError(f"scalarizer.component: {recipe.scalarizer.component!r} must be "
                             f"one of rewards.components {components}")

    @classmethod
    def from_recipe(cls, recipe, *, d_model: int, device="cpu"):
        components = list(recipe.rewards.components)
        name = recipe.scalarizer.component
        if name not in components:
            raise ValueError(f"scalarizer.component: {name!r} not in rewards.components "
                             f"{components}")
        return cls(len(components), components.index(name))

    def __call__(self, ctx: ScalarizerContext) -> Scalarization:
        weights = torch.zeros(ctx.rewards.shape[0], self.num_components)
        weights[:, self.index] = 1.0
        return Scalarization(weights)


@register_scalarizer("random")
class RandomScalarizer(Scalarizer):
    """w ~ Dirichlet(alpha * 1), one independent draw per response.

    Response i's draw is seeded by its entry of the global uniform stream, so the
    weights do not depend on how responses are split over data-parallel ranks.
    """

    def __init__(self, num_components: int, alpha: float = 1.0):
        super().__init__(num_components)
        if alpha <= 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    @classmethod
    def check_recipe(cls, recipe) -> None:
        if recipe.scalarizer.dirichlet_alpha <= 0.0:
            raise ValueError("scalarizer.dirichlet_alpha: must be > 0, got "
                             f"{recipe.scalarizer.dirichlet_alpha}")

    @classmethod
    def from_recipe(cls, recipe, *, d_model: int, device="cpu"):
        return cls(len(recipe.rewards.components), recipe.scalarizer.dirichlet_alpha)

    def __call__(self, ctx: ScalarizerContext) -> Scalarization:
        dirichlet = torch.distributions.Dirichlet(torch.full((self.num_components,), self.alpha))
        rows = []
        with torch.random.fork_rng(devices=[]):
            for u in ctx.uniforms.tolist():
                torch.manual_seed(int(u * 2**53))
                rows.append(dirichlet.sample())
        weights = torch.stack(rows) if rows else torch.zeros(0, self.num_components)
        return Scalarization(weights)
