"""NOVER's verifier-free reward (Liu et al., "NOVER: Incentive Training for Language
Models via Verifier-Free Reinforcement Learning", arXiv 2505.16022; public code:
thinkwee/NOVER, src/utils.py `calculate_perplexity`, src/reward_functions.py).

Per response i of a group, with t_i its reasoning (the <think> span) and g the
reference answer scored after prompt + reasoning by a proxy model pi_p (the policy):

    P_r(i) = exp( -(1/|g|) sum_k log pi_p(g_k | p, t_i, g_<k) / N(|t_i|) ),
    N(|t|) = max(1, 1 + log10 |t|)                       (reasoning perplexity)
    R_r(i) = (n - rank_i) / n      rank_i = 0 for the lowest P_r among the n valid ones
    R_e(i) = #{j valid, j != i : |t_i| < |t_j| and P_r(i) < P_r(j)} / (n - 1)
    R(i)   = w_f R_f(i) + 1(R_f(i) = 1) (w_r R_r(i) + w_e R_e(i))

A response is valid when it has the format (R_f = 1) and its reference was scored
whole; invalid responses get R_r = R_e = 0. Ties keep response order (a stable sort,
as the reference code). log10 is NOVER's choice (utils.py), not the natural log.
"""

from __future__ import annotations

import math

import torch


def length_normaliser(reasoning_tokens: torch.Tensor) -> torch.Tensor:
    """N(|t|) = max(1, 1 + log10 |t|); reasoning_tokens: [B] counts (0 -> 1)."""
    counts = reasoning_tokens.double()
    logs = torch.where(counts > 0, torch.log10(counts.clamp(min=1.0)),
                       torch.full_like(counts, -math.inf))
    return torch.clamp(1.0 + logs, min=1.0)


def reasoning_perplexity(answer_logprobs: torch.Tensor, answer_mask: torch.Tensor,
                         reasoning_tokens: torch.Tensor) -> torch.Tensor:
    """P_r = exp(mean NLL of the reference tokens / N(|t|)); [B, T], [B, T], [B] -> [B]
    (inf where nothing was scored)."""
    mask = answer_mask.double()
    count = mask.sum(dim=1)
    nll = -(answer_logprobs.double() * mask).sum(dim=1) / count.clamp(min=1.0)
    ppl = torch.exp(nll / length_normaliser(reasoning_tokens))
    return torch.where(count > 0, ppl, torch.full_like(ppl, math.inf))


def rank_reward(perplexity: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """R_r per group; perplexity, valid: [N, G] -> [N, G]."""
    out = torch.zeros_like(perplexity, dtype=torch.float64)
    for i in range(perplexity.shape[0]):
        idx = valid[i].nonzero().flatten()
        n = idx.numel()
        order = sorted(idx.tolist(), key=lambda j: float(perplexity[i, j]))  # stable
        for rank, j in enumerate(order):
            out[i, j] = (n - rank) / n
    return out


def efficiency_reward(perplexity: torch.Tensor, reasoning_tokens: torch.Tensor,
                      valid: torch.Tensor) -> torch.Tensor:
    """R_e per group: the share of other valid responses that are both longer and worse
    (higher P_r); [N, G] each -> [N, G]; 0 for groups with fewer than 2 valid."""
    out = torch.zeros_like(perplexity, dtype=torch.float64)
    for i in range(perplexity.shape[0]):
        idx = valid[i].nonzero().flatten().tolist()
        if len(idx) < 2:
            continue
        for a in idx:
            better = sum(1 for b in idx if b != a
                         and reasoning_tokens[i, a] < reasoning_tokens[i, b]
                         and perplexity[i, a] < perplexity[i, b])
            out[i, a] = better / (len(idx) - 1)
    return out


def nover_reward(fmt: torch.Tensor, perplexity: torch.Tensor, reasoning_tokens: torch.Tensor,
                 scored: torch.Tensor, *, w_format: float = 1.0, w_reasoning: float = 1.0,
                 w_efficiency: float = 1.0) -> torch.Tensor:
    """R = w_f R_f + 1(R_f = 1)(w_r R_r + w_e R_e); all inputs [N, G] -> [N, G].

    fmt: R_f in {0, 1}; scored: the reference was scored whole (else invalid).
    """
    valid = (fmt > 0.5) & scored.bool() & torch.isfinite(perplexity)
    gated = (w_reasoning * rank_reward(perplexity, valid)
             + w_efficiency * efficiency_reward(perplexity, reasoning_tokens, valid))
    return (w_format * fmt.double() + valid.double() * gated).float()
