"""REINFORCE loss of the Conductor (MAESTRO, the outer loop).

L(phi) = -(1/NG) sum_ij [ A_ij log pi_phi(a_ij | h_ij) + lambda_ent H(pi_phi(. | h_ij)) ]
The advantages A_ij are the policy's group-relative advantages, used as the meta-reward.
"""

from __future__ import annotations

import torch

from maestro_megatron.conductor.head import Conductor


def conductor_loss(conductor: Conductor, h: torch.Tensor, actions: torch.Tensor,
                   advantages: torch.Tensor, ent_coef: float
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """h: [B, d_model], actions: [B] long, advantages: [B] -> (loss, metrics).

    B = N*G buffered responses; the 1/NG normalisation is the mean over B.
    """
    log_probs = conductor.log_probs(h)
    chosen = log_probs.gather(1, actions.long().unsqueeze(1)).squeeze(1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    adv = advantages.detach().to(chosen.dtype)
    loss = -(adv * chosen + ent_coef * entropy).mean()
    with torch.no_grad():
        metrics = {"entropy": entropy.mean(), "pg_term": -(adv * chosen).mean()}
    return loss, metrics
