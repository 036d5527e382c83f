"""DYNAOPT as a scalarizer: one weight vector shared by every response, moved once per
stage of S policy steps by an Exp3 bandit (Min et al., "Dynamic Reward Adjustment in
Multi-Reward Reinforcement Learning for Counselor Reflection Generation", LREC-COLING
2024, arXiv 2403.13578; public code MichiganNLP/dynaopt, `bandit_alg.py`, `rl_train.py`).

Symbols: K components, K + 1 arms (arm k < K: "raise weight k", arm K: "no change"),
theta [K] the log-weights of the components, L [K + 1] the Exp3 log-weights of the arms.

    w = softmax(theta)                                  every response of the stage
    p = (1 - gamma) softmax(L) + gamma / (K + 1)        Exp3 (Auer et al. 2002)

Stage t covers steps (t - 1) S + 1 .. t S. At its first step the arm a_t is drawn from p
by inverse CDF of u, entry 0 of that step's global uniform stream (`step_uniforms`: the
same on every data-parallel rank, whatever the split, and reproducible from the seed),
and applied: theta_k += eta if a_t = k < K. At its last step the bandit is credited:

    m_k^t, v_k^t: mean and variance of RAW component k over every response of stage t
                  (all data-parallel ranks; the sums are all-reduced every step)
    z_k = (m_k^t - m_k^{t-1}) / sd_k,  sd_k the pooled sd of both stages' responses
          (z_k = 0 when sd_k = 0)
    r_t = clip(mean_k z_k, -1, 1)
    L_{a_t} += gamma * (r_t / p_{a_t}) / (K + 1)        Exp3's importance-weighted update

For stage 1 the previous stage is step 1's responses alone (the starting policy).

How this differs from the original, and why:
- Their policy was trained by k-SCST (k samples per prompt, baseline the mean of their
  scores, REINFORCE) with w weighting log scores ("logsum"). Here the same bandit sets
  the weights of MAESTRO's GRPO objective R = w . r~ - beta KL (group-normalised
  components, clipped ratio, KL), as every scalarizer in this package does, so an
  ablation against MAESTRO compares weighting rules and nothing else. GRPO's group
  baseline is k-SCST's mean-of-k baseline plus std normalisation, so little is lost.
- Their bandit reward was the mean over components of (validation-set mean score minus
  the mean of the previous validation scores), on a held-out generation pass every
  `rl_validation_step` steps, with scores in [0, 1]; the first stage earned 0. Ours
  reads the stage's own rollouts (no extra generation pass on the rollout engine),
  standardises each component's change by its pooled sd because our components live on
  different scales (fmt in {0, 1}, len in [-1, 0], ent ~ 1e-2), and clips to [-1, 1]
  so r / p stays bounded as with their [0, 1] scores; step 1 is stage 1's baseline so
  that one stage already teaches the bandit.
- Their "raise weight k" was a second Exp3 over the K components updated with reward 1,
  v_k *= exp(gamma / (K q_k)), a step that grows as q_k shrinks; ours is a constant
  step eta in log space (eta = gamma = 0.07 equals their first raise from equal weights).
"""

from __future__ import annotations

import torch

from maestro_megatron.scalarizers.base import (
    ReplicaSync,
    Scalarization,
    Scalarizer,
    ScalarizerContext,
    register_scalarizer,
    step_uniforms,
)


def exp3_probs(log_weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """p = (1 - gamma) softmax(L) + gamma / A over A arms: [A] -> [A]."""
    return (1.0 - gamma) * torch.softmax(log_weights, dim=0) + gamma / log_weights.numel()


def exp3_update(log_weights: torch.Tensor, arm: int, reward: float, gamma: float
                ) -> torch.Tensor:
    """Exp3's update after pulling `arm`: L_arm += gamma (reward / p_arm) / A."""
    probs = exp3_probs(log_weights, gamma)
    out = log_weights.clone()
    out[arm] += gamma * (reward / probs[arm].item()) / log_weights.numel()
    return out


def draw_arm(probs: torch.Tensor, u: float) -> int:
    """Inverse CDF: the first arm whose cumulative probability exceeds u in [0, 1)."""
    arm = int(torch.searchsorted(probs.cumsum(0), torch.tensor([u], dtype=probs.dtype),
                                 right=True))
    return min(arm, probs.numel() - 1)  # u beyond a cumsum that rounded below 1


def moments(rewards: torch.Tensor) -> torch.Tensor:
    """[B, K] -> [3, K] float64: count, sum, sum of squares per component."""
    x = rewards.to(torch.float64)
    return torch.stack([torch.full_like(x[0], x.shape[0]), x.sum(0), (x * x).sum(0)]) \
        if x.shape[0] else torch.zeros(3, x.shape[1], dtype=torch.float64)


def stage_reward(prev: torch.Tensor, cur: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Bandit reward of a stage from the [3, K] moments of the previous and this stage:
    (r = clip(mean_k z_k, -1, 1), z [K]) with z_k = (m_k - m_k^prev) / pooled sd_k."""
    mean_prev, mean_cur = prev[1] / prev[0], cur[1] / cur[0]
    both = prev + cur
    var = (both[2] / both[0] - (both[1] / both[0]) ** 2).clamp_min(0.0)
    sd = var.sqrt()
    z = torch.where(sd > 1e-12, (mean_cur - mean_prev) / sd.clamp_min(1e-12),
                    torch.zeros_like(sd))
    return float(z.mean().clamp(-1.0, 1.0)), z


@register_scalarizer("dynaopt")
class DynaoptScalarizer(Scalarizer):
    """names: the K component names; initial: w_0 [K]; stage_steps: S; gamma: Exp3's
    rate; step_size: eta; seed / num_global: the step's global uniform stream."""

    def __init__(self, names: tuple[str, ...], *, initial: list[float] | None = None,
                 stage_steps: int = 10, gamma: float = 0.07, step_size: float = 0.07,
                 seed: int = 1234, num_global: int = 1, device: torch.device | str = "cpu"):
        super().__init__(len(names))
        k = len(names)
        initial = initial if initial is not None else [1.0 / k] * k
        self.names = tuple(names)
        self.stage_steps, self.gamma, self.step_size = stage_steps, gamma, step_size
        self.seed, self.num_global, self.device = seed, num_global, device
        self.theta = torch.tensor(initial, dtype=torch.float64).log()
        self.arm_log_weights = torch.zeros(k + 1, dtype=torch.float64)
        self.arm, self.arm_stage = -1, -1
        self.pulls = torch.zeros(k + 1, dtype=torch.long)
        self.current = torch.zeros(3, k, dtype=torch.float64)
        self.previous: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None  # this step's local moments

    @classmethod
    def check_recipe(cls, recipe) -> None:
        d, k = recipe.dynaopt, len(recipe.rewards.components)
        if d.stage_steps < 1:
            raise ValueError(f"dynaopt.stage_steps: must be >= 1, got {d.stage_steps}")
        if not 0.0 < d.gamma <= 1.0:
            raise ValueError(f"dynaopt.gamma: must be in (0, 1], got {d.gamma}")
        if d.step_size <= 0.0:
            raise ValueError(f"dynaopt.step_size: must be > 0, got {d.step_size}")
        w = d.initial_weights
        if w is not None and (len(w) != k or min(w) <= 0.0 or abs(sum(w) - 1.0) > 1e-6):
            raise ValueError(f"dynaopt.initial_weights: needs {k} positive weights summing "
                             f"to 1 (one per rewards.components), got {list(w)}")

    @classmethod
    def from_recipe(cls, recipe, *, d_model: int, device="cpu"):
        cls.check_recipe(recipe)
        d, g = recipe.dynaopt, recipe.grpo
        initial = list(d.initial_weights) if d.initial_weights is not None else None
        return cls(tuple(recipe.rewards.components), initial=initial,
                   stage_steps=d.stage_steps, gamma=d.gamma, step_size=d.step_size,
                   seed=recipe.scalarizer.seed,
                   num_global=g.num_prompts_per_step * g.group_size, device=device)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return (*self.names, "none")

    def weights(self) -> torch.Tensor:
        """[K] float32: softmax(theta)."""
        return torch.softmax(self.theta, dim=0).to(torch.float32)

    def arm_probs(self) -> torch.Tensor:
        """[K + 1] Exp3 probabilities of the arms."""
        return exp3_probs(self.arm_log_weights, self.gamma)

    def _pull(self, step: int, stage: int) -> None:
        u = step_uniforms(self.seed, step, self.num_global, 0, 1)[0].item()
        self.arm, self.arm_stage = draw_arm(self.arm_probs(), u), stage
        self.pulls[self.arm] += 1
        if self.arm < self.num_components:
            self.theta[self.arm] += self.step_size

    def __call__(self, ctx: ScalarizerContext) -> Scalarization:
        stage = (ctx.step - 1) // self.stage_steps
        if stage != self.arm_stage:
            self._pull(ctx.step, stage)
        rows = ctx.rewards.shape[0]
        return Scalarization(self.weights().expand(rows, -1).clone())

    def observe(self, ctx: ScalarizerContext, used: Scalarization,
                advantages: torch.Tensor) -> None:
        self._pending = moments(ctx.rewards)

    def update(self, step: int, sync: ReplicaSync = ReplicaSync()) -> dict[str, float]:
        """Adds the step's global moments to the stage; at a stage end credits the arm."""
        if self._pending is not None:
            step_moments = sync.sum_over_dp(self._pending.to(self.device)).cpu()
            self._pending = None
            self.current += step_moments
            if self.previous is None:  # stage 1's baseline: the starting policy (step 1)
                self.previous = step_moments.clone()
        metrics = {"dynaopt/arm": float(self.arm)}
        if step % self.stage_steps or self.arm < 0 or self.current[0, 0] == 0:
            return metrics
        reward, z = stage_reward(self.previous, self.current)
        self.arm_log_weights = exp3_update(self.arm_log_weights, self.arm, reward, self.gamma)
        self.previous, self.current = self.current, torch.zeros_like(self.current)
        metrics["dynaopt/bandit_reward"] = reward
        for name, value in zip(self.names, z.tolist()):
            metrics[f"dynaopt/improvement/{name}"] = value
        for name, value in zip(self.arm_names, self.arm_probs().tolist()):
            metrics[f"dynaopt/arm_prob/{name}"] = value
        return metrics

    def state_dict(self) -> dict:
        """Replicated on every rank: the moments are global sums, the draws global."""
        return {"names": self.names, "theta": self.theta.clone(),
                "arm_log_weights": self.arm_log_weights.clone(), "arm": self.arm,
                "arm_stage": self.arm_stage, "pulls": self.pulls.clone(),
                "current": self.current.clone(),
                "previous": None if self.previous is None else self.previous.clone()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["names"]) != self.names:
            raise ValueError(f"rewards.components: the checkpoint's DYNAOPT state is over "
                             f"{list(state['names'])}, this run has {list(self.names)}")
        self.theta = state["theta"].clone()
        self.arm_log_weights = state["arm_log_weights"].clone()
        self.arm, self.arm_stage = int(state["arm"]), int(state["arm_stage"])
        self.pulls = state["pulls"].clone()
        self.current = state["current"].clone()
        self.previous = None if state["previous"] is None else state["previous"].clone()

