"""MAESTRO's Conductor as a scalarizer: one action per response, a ~ pi_phi(. | h),
w = w(a); REINFORCE on the group advantages every M steps (MAESTRO, arXiv 2601.07208).

The outer loop lives in the `observe` / `update` hooks: triples (h, a, A) go into the
meta buffer after each policy step; every M steps E epochs of `conductor_loss` over the
buffer, gradients averaged over data-parallel ranks through the passed-in
`ReplicaSync`, then a check that tensor-parallel replicas did not drift.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maestro_megatron.conductor import (
    Conductor,
    MetaBuffer,
    TwoTimescale,
    conductor_from_config,
    conductor_update,
    schedule_from_config,
)
from maestro_megatron.conductor.io import (
    check_conductor_config,
    conductor_config,
    save_conductor,
)
from maestro_megatron.scalarizers.base import (
    ReplicaSync,
    Scalarization,
    Scalarizer,
    ScalarizerContext,
    register_scalarizer,
)


@register_scalarizer("conductor")
class ConductorScalarizer(Scalarizer):
    """conductor: the policy head; lr: its Adam learning rate; ent_coef: lambda_ent;
    schedule: the two-timescale cadence (M, E, buffer policy)."""

    needs_hidden = True

    def __init__(self, conductor: Conductor, *, lr: float, ent_coef: float,
                 schedule: TwoTimescale = TwoTimescale()):
        super().__init__(conductor.num_components)
        self.conductor = conductor
        self.optimizer = torch.optim.Adam(conductor.parameters(), lr=lr)
        self.ent_coef, self.schedule = ent_coef, schedule
        self.buffer = MetaBuffer()

    @classmethod
    def from_recipe(cls, recipe, *, d_model: int, device="cpu"):
        cfg = recipe.conductor
        conductor = conductor_from_config(cfg, d_model, len(recipe.rewards.components))
        return cls(conductor.to(device), lr=cfg.lr, ent_coef=cfg.ent_coef,
                   schedule=schedule_from_config(cfg))

    @staticmethod
    def _h(ctx: ScalarizerContext) -> torch.Tensor:
        if ctx.h is None:
            raise ValueError("the conductor scalarizer needs the hidden states h")
        return ctx.h

    def __call__(self, ctx: ScalarizerContext) -> Scalarization:
        actions = self.conductor.sample_from_uniforms(self._h(ctx), ctx.uniforms)
        return Scalarization(self.conductor.action_weights(actions).cpu(), actions)

    def report_weights(self, ctx: ScalarizerContext, used: Scalarization) -> torch.Tensor:
        """The deterministic weights w(h) = sum_a pi(a | h) w(a)."""
        return self.conductor.weights(self._h(ctx)).cpu()

    def metric_sums(self, ctx: ScalarizerContext) -> dict[str, float]:
        return {"conductor/policy_entropy": self.conductor.entropy(self._h(ctx)).sum().item()}

    def observe(self, ctx: ScalarizerContext, used: Scalarization,
                advantages: torch.Tensor) -> None:
        self.buffer.append(self._h(ctx), used.actions, advantages, ctx.task_ids)

    def update(self, step: int, sync: ReplicaSync = ReplicaSync()) -> dict[str, float]:
        if not self.schedule.is_update_step(step) or len(self.buffer) == 0:
            return {}
        metrics = conductor_update(self.conductor, self.optimizer, self.buffer, self.schedule,
                                   self.ent_coef, grad_sync=sync.average_gradients)
        sync.check_replicas(self.conductor)
        return metrics

    def state_dict(self) -> dict:
        return {"config": conductor_config(self.conductor),
                "conductor": self.conductor.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "meta_buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_conductor_config(state["config"], self.conductor)
        self.conductor.load_state_dict(state["conductor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["meta_buffer"])

    def export(self, run_dir, components: tuple[str, ...]) -> None:
        """`run_dir/conductor.pt`: weights + config (what `maestro explain` loads)."""
        save_conductor(Path(run_dir) / "conductor.pt", self.conductor, components)

    @classmethod
    def reshard_states(cls, states: list[dict], dp_rank: int, dp_size: int) -> dict:
        """The Conductor is replicated; the meta buffer (each DP rank's own triples) is
        concatenated and re-split evenly (the loss is a mean over all triples)."""
        parts = [s["meta_buffer"] for s in states if s["meta_buffer"]]
        buffer: dict = {}
        if parts:
            full = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            total = full["actions"].numel()
            if total % dp_size:
                raise ValueError(f"meta buffer of {total} triples cannot be split over "
                                 f"{dp_size} data-parallel ranks")
            size = total // dp_size
            buffer = {k: v[dp_rank * size:(dp_rank + 1) * size] for k, v in full.items()}
        return {**states[0], "meta_buffer": buffer}
