"""Scalarizers: reward vector -> scalar reward. Conductor or a Conductor-less baseline.

R[i, j] = w[i, j] . r~[i, j, :] - beta * KL_seq[i, j]        (DESIGN.md section 3)
Each scalarizer returns per-response weights w: [B, K] and the sampled actions [B]
(None for baselines). Baselines are registry entries, not code paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from maestro_megatron.conductor.head import Conductor

SCALARIZERS: dict[str, Callable] = {}


def register_scalarizer(name: str):
    def deco(cls):
        SCALARIZERS[name] = cls
        return cls
    return deco


@register_scalarizer("conductor")
class ConductorScalarizer:
    """w = w(a), a ~ pi_phi(. | h), one draw per response."""

    def __init__(self, components, conductor: Conductor, **_):
        if conductor.num_components != len(components):
            raise ValueError(f"conductor has K={conductor.num_components} template columns, "
                             f"rewards.components has {len(components)}")
        self.conductor = conductor

    def __call__(self, h, num_responses, generator):
        if h is None:
            raise ValueError("conductor scalarizer needs the hidden states h")
        actions = self.conductor.sample(h, generator)
        return self.conductor.action_weights(actions), actions


@register_scalarizer("equal")
class EqualScalarizer:
    """Fixed uniform weights 1/K."""

    def __init__(self, components, **_):
        self.num_components = len(components)

    def __call__(self, h, num_responses, generator):
        w = torch.full((num_responses, self.num_components), 1.0 / self.num_components)
        return w, None


@register_scalarizer("random")
class RandomScalarizer:
    """w ~ Dirichlet(alpha * 1) drawn per response from the given generator."""

    def __init__(self, components, dirichlet_alpha: float = 1.0, **_):
        self.num_components, self.alpha = len(components), float(dirichlet_alpha)

    def __call__(self, h, num_responses, generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            conc = torch.full((num_responses, self.num_components), self.alpha)
            w = torch.distributions.Dirichlet(conc).sample()
        return w, None


@register_scalarizer("single")
class SingleScalarizer:
    """All weight on one component (NOVER: ppl; EM-GRPO: ent with mode=minimize)."""

    def __init__(self, components, component: str | None = None, **_):
        if component not in components:
            raise ValueError(f"single scalarizer: component {component!r} not in {components}")
        self.index, self.num_components = list(components).index(component), len(components)

    def __call__(self, h, num_responses, generator):
        w = torch.zeros(num_responses, self.num_components)
        w[:, self.index] = 1.0
        return w, None


def build_scalarizer(name: str, components: tuple[str, ...], **options):
    """Look a scalarizer up by recipe name; options: conductor, component, dirichlet_alpha."""
    if name not in SCALARIZERS:
        raise KeyError(f"scalarizer {name!r} is not registered (known: {sorted(SCALARIZERS)})")
    return SCALARIZERS[name](components, **options)


def scalar_reward(weights: torch.Tensor, rewards: torch.Tensor,
                  kl_seq: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """R = w . r~ - beta * KL_seq; weights, rewards: [B, K], kl_seq: [B] -> [B]."""
    scalar = (weights.to(rewards.dtype) * rewards).sum(dim=-1)
    if kl_seq is not None and kl_coef:
        scalar = scalar - kl_coef * kl_seq.to(scalar.dtype)
    return scalar
