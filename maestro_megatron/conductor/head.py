"""The Conductor: a linear contextual-bandit policy over reward-weight templates.

pi_phi(a | h) = (1 - J p_min) softmax((W h + b) / tau) + p_min      (MAESTRO, section 3)
W: [J, d_model]. h is the policy's final-layernorm output at the last response token and
is always detached: no gradient flows from the Conductor into the policy.
"""

from __future__ import annotations

import torch
from torch import nn

from maestro_megatron.conductor.templates import validate_templates


class Conductor(nn.Module):
    """Linear head over J actions, each with a weight template on the K-simplex.

    d_model: hidden size; templates: [J, K]; tau > 0: temperature; p_min in [0, 1/J).
    Parameters start at zero (a uniform policy), so replicas start identical.
    """

    def __init__(self, d_model: int, templates: torch.Tensor, tau: float = 1.0,
                 p_min: float = 0.0):
        super().__init__()
        templates = validate_templates(templates)
        num_actions = templates.shape[0]
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if not 0.0 <= p_min < 1.0 / num_actions:
            raise ValueError(f"p_min must be in [0, 1/J={1.0 / num_actions:.4g}), got {p_min}")
        self.d_model, self.tau, self.p_min = d_model, float(tau), float(p_min)
        self.linear = nn.Linear(d_model, num_actions)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("templates", templates)

    @property
    def num_actions(self) -> int:
        return self.templates.shape[0]

    @property
    def num_components(self) -> int:
        return self.templates.shape[1]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: [B, d_model] -> (W h + b) / tau: [B, J]."""
        h = h.detach().to(self.linear.weight.dtype)
        return self.linear(h) / self.tau

    def probs(self, h: torch.Tensor) -> torch.Tensor:
        """h: [B, d_model] -> pi(. | h): [B, J], floored at p_min."""
        soft = torch.softmax(self.logits(h), dim=-1)
        return (1.0 - self.num_actions * self.p_min) * soft + self.p_min

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """log pi(. | h): [B, J]."""
        if self.p_min == 0.0:
            return torch.log_softmax(self.logits(h), dim=-1)
        return torch.log(self.probs(h))

    def entropy(self, h: torch.Tensor) -> torch.Tensor:
        """H(pi(. | h)): [B]."""
        return -(self.probs(h) * self.log_probs(h)).sum(dim=-1)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One action per row (per response): a ~ Cat(pi(. | h)); -> [B] long."""
        uniforms = torch.rand(h.shape[0], generator=generator, dtype=torch.float64)
        return self.sample_from_uniforms(h, uniforms)

    @torch.no_grad()
    def sample_from_uniforms(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF draw: a = #{a' : CDF(a') <= u}; h: [B, d], uniforms: [B] in [0, 1).

        Lets distributed callers draw one stream of uniforms for the global batch and
        slice it, so actions do not depend on how the batch is split over ranks.
        """
        cdf = self.probs(h).to(torch.float64).cpu().cumsum(dim=-1)
        actions = (cdf <= uniforms.to(torch.float64).cpu().unsqueeze(1)).sum(dim=-1)
        return actions.clamp(max=self.num_actions - 1).to(h.device)

    def action_weights(self, actions: torch.Tensor) -> torch.Tensor:
        """actions: [B] -> w(a): [B, K]."""
        return self.templates[actions]

    @torch.no_grad()
    def weights(self, h: torch.Tensor) -> torch.Tensor:
        """Deterministic inference weights w(h) = sum_a pi(a | h) w(a): [B, K]."""
        return self.probs(h) @ self.templates

    def extra_repr(self) -> str:
        return f"tau={self.tau}, p_min={self.p_min}, J={self.num_actions}, K={self.num_components}"
