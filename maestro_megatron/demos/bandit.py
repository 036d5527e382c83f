"""A contextual-bandit check of the Conductor on synthetic data (no policy model).

Hidden states come from C clusters (task types). In cluster c the reward component
k*_c has true mean `gap` and the others 0, so emphasising k*_c gives a response a
higher scalar reward, and hence a higher group-relative advantage, than its peers.
The Conductor is trained exactly as in MAESTRO: one action per response, advantages
from the group, REINFORCE every M steps for E epochs. True utility of a weighting w
in cluster c is w . mu_c (the expected true reward it optimises).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maestro_megatron.conductor import Conductor, TwoTimescale, emphasis_templates
from maestro_megatron.config.schema import GRPOConfig
from maestro_megatron.scalarizers import ConductorScalarizer, scalarize_step

COMPONENTS = ("ppl", "fmt", "ent", "len", "pref")


@dataclass(frozen=True)
class BanditSetup:
    """Sizes and seeds of the synthetic problem."""

    d_model: int = 16
    best_components: tuple[int, ...] = (0, 2, 4)
    gap: float = 1.0
    noise: float = 1.0
    h_noise: float = 0.3
    num_prompts: int = 12
    group_size: int = 8
    num_steps: int = 150
    lr: float = 0.05
    ent_coef: float = 0.001
    update_every: int = 2
    epochs: int = 2
    seed: int = 0


def _clusters(setup: BanditSetup, gen: torch.Generator):
    centers = torch.randn(len(setup.best_components), setup.d_model, generator=gen)
    centers = 3.0 * centers / centers.norm(dim=1, keepdim=True)
    means = torch.zeros(len(setup.best_components), len(COMPONENTS))
    for c, k in enumerate(setup.best_components):
        means[c, k] = setup.gap
    return centers, means


def _draw(setup, centers, means, gen):
    """One step of data: h [N*G, d], rewards [N, G, K], cluster ids [N*G]."""
    n, g = setup.num_prompts, setup.group_size
    cluster = torch.randint(0, centers.shape[0], (n,), generator=gen).repeat_interleave(g)
    h = centers[cluster] + setup.h_noise * torch.randn(n * g, setup.d_model, generator=gen)
    r = means[cluster] + setup.noise * torch.randn(n * g, len(COMPONENTS), generator=gen)
    return h, r.view(n, g, -1), cluster


def run_bandit(setup: BanditSetup = BanditSetup()) -> dict:
    """Train a Conductor on the synthetic bandit; returns per-cluster figures.

    Returns {"p_best": [C] probability of the right action, "utility_conductor": [C],
    "utility_equal": [C], "mean_weights": [C, K]}.
    """
    gen = torch.Generator().manual_seed(setup.seed)
    torch.manual_seed(setup.seed)
    centers, means = _clusters(setup, gen)
    conductor = Conductor(setup.d_model, emphasis_templates(len(COMPONENTS), 0.5))
    scalarizer = ConductorScalarizer(
        conductor, lr=setup.lr, ent_coef=setup.ent_coef,
        schedule=TwoTimescale(update_every=setup.update_every, epochs=setup.epochs))
    grpo = GRPOConfig(group_size=setup.group_size, kl_coef=0.0)
    for step in range(1, setup.num_steps + 1):
        h, rewards, cluster = _draw(setup, centers, means, gen)
        rows = h.shape[0]
        no_tokens = torch.zeros(rows, 1)  # no policy here: KL = 0
        sc = scalarize_step(scalarizer, rewards.view(rows, -1), logprobs=no_tokens,
                            ref_logprobs=no_tokens, response_mask=torch.ones(rows, 1), h=h,
                            step=step, grpo=grpo, normalization="none", task_ids=cluster,
                            uniforms=torch.rand(rows, generator=gen, dtype=torch.float64))
        scalarizer.observe(sc.context, sc.used, sc.advantages)
        scalarizer.update(step)
    return evaluate(conductor, centers, means, setup)


@torch.no_grad()
def evaluate(conductor: Conductor, centers, means, setup: BanditSetup) -> dict:
    gen = torch.Generator().manual_seed(setup.seed + 1)
    p_best, util_c, util_eq, mean_w = [], [], [], []
    equal = torch.full((len(COMPONENTS),), 1.0 / len(COMPONENTS))
    for c, k in enumerate(setup.best_components):
        h = centers[c] + setup.h_noise * torch.randn(256, setup.d_model, generator=gen)
        probs, w = conductor.probs(h).mean(0), conductor.weights(h).mean(0)
        p_best.append(float(probs[k]))
        util_c.append(float(w @ means[c]))
        util_eq.append(float(equal @ means[c]))
        mean_w.append(w.tolist())
    return {"p_best": p_best, "utility_conductor": util_c, "utility_equal": util_eq,
            "mean_weights": mean_w}


def format_report(result: dict) -> str:
    lines = ["cluster  p(best)  utility(conductor)  utility(equal)  mean weights "
             + " ".join(f"{c:>5}" for c in COMPONENTS)]
    for c, (p, uc, ue, w) in enumerate(zip(result["p_best"], result["utility_conductor"],
                                           result["utility_equal"], result["mean_weights"])):
        ws = " ".join(f"{x:5.2f}" for x in w)
        lines.append(f"{c:>7}  {p:7.3f}  {uc:18.3f}  {ue:14.3f}  {'':12} {ws}")
    return "\n".join(lines)
