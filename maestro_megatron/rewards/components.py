"""The five MAESTRO reward components (DESIGN.md section 3), as pure functions.

Each returns a float per response, [B]. The registry `REWARDS` maps a recipe name to a
`RewardSpec`: an adapter `(RewardBatch, options) -> [B]` and the inputs it needs that
cost a forward or a model (`NEEDS_PROXY`: the r_ppl proxy forward of prompt + reasoning
+ reference; `NEEDS_SCORER`: a preference scorer; `NEEDS_POLICY`: the policy's entropy or
log-probs before the update), so the trainer asks the registry
what to compute instead of testing names. New components are a function plus
`@register_reward("name", needs=...)`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maestro_megatron.errors import UserError
from maestro_megatron.rewards.batch import RewardBatch

RewardFn = Callable[[RewardBatch, object], torch.Tensor]
NEEDS_PROXY = "proxy_forward"
NEEDS_SCORER = "pref_scorer"
NEEDS_POLICY = "policy_forward"
"""The policy's own forward of the step's responses before the update (entropy, log-probs)."""


@dataclass(frozen=True)
class RewardSpec:
    """A registered component: its adapter and the costly inputs it needs."""

    fn: RewardFn
    needs: frozenset[str] = frozenset()


REWARDS: dict[str, RewardSpec] = {}


def register_reward(name: str, needs: tuple[str, ...] = ()) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = RewardSpec(fn, frozenset(needs))
        return fn
    return deco


def reward_needs(components) -> frozenset[str]:
    """The union of what the named components need (NEEDS_PROXY, NEEDS_SCORER, ...)."""
    return frozenset().union(*(REWARDS[name].needs for name in components))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def has_reference(reference: str | None) -> bool:
    """One rule everywhere: None, "" and whitespace are no reference."""
    return reference is not None and reference.strip() != ""


def ppl_reward(answer_logprobs: torch.Tensor, answer_mask: torch.Tensor,
               fallback_logprobs: torch.Tensor | None = None,
               fallback_mask: torch.Tensor | None = None,
               has_reference: torch.Tensor | None = None,
               skipped: torch.Tensor | None = None) -> torch.Tensor:
    """r_ppl = exp(mean log p(reference-answer tokens | prompt + response reasoning)).

    answer_logprobs, answer_mask: [B, Ta]. Rows with has_reference False use the
    response's own mean token log-prob under the proxy (fallback_*: [B, T]). (NOVER.)
    Rows whose reference could not be scored whole (`skipped` [B] bool) score 0, and
    so does any referenced row with an empty mask: an unscored reference never gets
    exp(0) = 1, the best score.
    """
    scored = answer_mask.sum(dim=1) > 0
    reward = torch.where(scored, torch.exp(_masked_mean(answer_logprobs, answer_mask)),
                         torch.zeros(()))
    if skipped is not None:
        reward = torch.where(skipped.bool(), torch.zeros(()), reward)
    if has_reference is None or bool(has_reference.all()):
        return reward
    if fallback_logprobs is None or fallback_mask is None:
        raise ValueError("ppl: samples without a reference need fallback log-probs")
    fallback = torch.exp(_masked_mean(fallback_logprobs, fallback_mask))
    return torch.where(has_reference.bool(), reward, fallback)


def fmt_reward(responses: list[str], pattern: str) -> torch.Tensor:
    """r_fmt = 1 if the whole response matches `pattern` (fullmatch, DOTALL) else 0."""
    compiled = re.compile(pattern, re.DOTALL)
    return torch.tensor([1.0 if compiled.fullmatch(r) else 0.0 for r in responses])


def ent_reward(entropy: torch.Tensor, mask: torch.Tensor, vocab_size: int,
               mode: str = "maximize", target: float = 0.5) -> torch.Tensor:
    """r_ent from H = mean token entropy / log(V): H (maximize), -H (minimize, EM-GRPO),
    or -|H - target| (target). entropy, mask: [B, T]."""
    if vocab_size < 2:
        raise ValueError(f"ent: vocab_size must be >= 2, got {vocab_size}")
    normalised = _masked_mean(entropy, mask) / math.log(vocab_size)
    if mode == "maximize":
        return normalised
    if mode == "minimize":
        return -normalised
    if mode == "target":
        return -(normalised - target).abs()
    raise ValueError(f"ent: mode {mode!r} is not maximize, minimize or target")


def len_reward(lengths: torch.Tensor, target_tokens: int, max_tokens: int) -> torch.Tensor:
    """r_len = -max(0, L - L_target) / L_max; lengths: [B] response tokens."""
    return -(lengths.float() - target_tokens).clamp(min=0.0) / float(max_tokens)


def pref_reward(scorer, prompts: list[str], responses: list[str],
                references: list[str | None]) -> torch.Tensor:
    """r_pref = the preference scorer's value for each response."""
    scores = torch.as_tensor(scorer.score(prompts, responses, references), dtype=torch.float32)
    if scores.shape != (len(responses),):
        raise ValueError(f"pref: scorer returned shape {tuple(scores.shape)}, "
                         f"expected ({len(responses)},)")
    return scores


def strip_answer(response: str, answer_pattern: str) -> str:
    """The response's reasoning with its answer span removed (input to r_ppl)."""
    return re.sub(answer_pattern, "", response, flags=re.DOTALL)


@register_reward("ppl", needs=(NEEDS_PROXY,))
def _ppl(batch: RewardBatch, opts) -> torch.Tensor:
    batch.require("proxy_answer_logprobs", "proxy_answer_mask")
    has_ref = torch.tensor([has_reference(r) for r in batch.references],
                           device=batch.proxy_answer_logprobs.device)
    return ppl_reward(batch.proxy_answer_logprobs, batch.proxy_answer_mask,
                      batch.proxy_response_logprobs, batch.response_mask, has_ref,
                      batch.proxy_answer_skipped)


@register_reward("fmt")
def _fmt(batch: RewardBatch, opts) -> torch.Tensor:
    return fmt_reward(batch.responses, opts.pattern)


@register_reward("ent", needs=(NEEDS_POLICY,))
def _ent(batch: RewardBatch, opts) -> torch.Tensor:
    batch.require("entropy", "response_mask")
    return ent_reward(batch.entropy, batch.response_mask, batch.vocab_size, opts.mode,
                      opts.target)


@register_reward("len")
def _len(batch: RewardBatch, opts) -> torch.Tensor:
    return len_reward(batch.response_lengths, opts.target_tokens, opts.max_tokens)


@register_reward("pref", needs=(NEEDS_SCORER,))
def _pref(batch: RewardBatch, opts) -> torch.Tensor:
    batch.require("pref_scorer")
    return pref_reward(batch.pref_scorer, batch.prompts, batch.responses, batch.references)


@register_reward("nover", needs=(NEEDS_PROXY,))
def _nover(batch: RewardBatch, opts) -> torch.Tensor:
    """NOVER's whole reward (format-gated rank + efficiency of the reasoning perplexity
    under the proxy; `maestro_megatron.rewards.nover`). Use it alone (scalarizer
    `single`, normalization none, Dr.GRPO advantages) for the NOVER baseline."""
    from maestro_megatron.rewards.nover import nover_reward, reasoning_perplexity

    batch.require("proxy_answer_logprobs", "proxy_answer_mask", "reasoning_tokens")
    g = batch.group_size
    device = batch.proxy_answer_logprobs.device
    fmt = fmt_reward(batch.responses, opts.format_pattern).to(device)
    ppl = reasoning_perplexity(batch.proxy_answer_logprobs, batch.proxy_answer_mask,
                               batch.reasoning_tokens)
    scored = torch.tensor([has_reference(r) for r in batch.references], device=device)
    if batch.proxy_answer_skipped is not None:
        scored &= ~batch.proxy_answer_skipped.bool()
    reward = nover_reward(fmt.view(-1, g), ppl.view(-1, g),
                          batch.reasoning_tokens.view(-1, g), scored.view(-1, g),
                          w_format=opts.w_format, w_reasoning=opts.w_reasoning,
                          w_efficiency=opts.w_efficiency)
    return reward.flatten()


def seq_logprob_reward(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r = (1/|y|) sum_t log pi(y_t | x, y_<t): minus the length-normalised entropy of
    the sampled trajectory, estimated from its own tokens (EM-RL's sequence-level
    reward: Agarwal et al., "The Unreasonable Effectiveness of Entropy Minimization in
    LLM Reasoning", arXiv 2505.15134; code: chotkrin/EM_PT, EMRLSequenceRewardManager,
    the mean of the rollout's old log-probs). logprobs, mask: [B, T] -> [B]."""
    return _masked_mean(logprobs, mask)


@register_reward("seq_logprob", needs=(NEEDS_POLICY,))
def _seq_logprob(batch: RewardBatch, opts) -> torch.Tensor:
    batch.require("policy_logprobs", "response_mask")
    return seq_logprob_reward(batch.policy_logprobs, batch.response_mask)


class RewardError(UserError, ValueError):
    """A reward component returned NaN/inf or raised (rewards.on_nonfinite: error)."""


def compute_rewards(batch: RewardBatch, components: tuple[str, ...], options,
                    times: dict[str, float] | None = None) -> torch.Tensor:
    """Stack the named components: -> r [B, K]. options: RewardsConfig (per-name fields).
    times: when given, each component's wall-clock seconds go to
    times["timing/reward/<name>"] (the step's metrics), to see which one costs.

    r lives on the host: a component computed on the model's device from [B, T]
    tensors (ppl, ent, seq_logprob) is copied to the host as one [B] column; the
    scalarization of [B, K] runs there (the Conductor's head on its own device).
    A component that raises or returns NaN/inf is a `RewardError` naming it and the
    first bad response, unless options.on_nonfinite is "skip": then the bad entries
    are NaN in the result (a raising component: its whole column) and the scalarize
    step gives those responses advantage 0 and counts them.
    """
    skip = getattr(options, "on_nonfinite", "error") == "skip"
    columns = []
    for name in components:
        if name not in REWARDS:
            raise KeyError(f"reward {name!r} is not registered (known: {sorted(REWARDS)})")
        start = time.perf_counter()
        try:
            column = REWARDS[name].fn(batch, getattr(options, name, None)).float()
            column = column.cpu()
        except (ValueError, RuntimeError, OSError) as exc:
            if not skip:
                raise RewardError(f"reward {name!r} failed: {exc} (rewards.on_nonfinite: "
                                  "skip would count and skip the batch)") from exc
            column = torch.full((len(batch),), float("nan"))
        if times is not None:
            times[f"timing/reward/{name}"] = time.perf_counter() - start
        bad = (~torch.isfinite(column)).nonzero().flatten()
        if bad.numel() and not skip:
            i = int(bad[0])
            raise RewardError(
                f"reward {name!r} is {column[i].item()} for response {i} of the batch "
                f"(prompt {batch.prompts[i][:60]!r}, response {batch.responses[i][:60]!r}); "
                f"{bad.numel()} non-finite in all (rewards.on_nonfinite: skip would give "
                "them advantage 0)")
        columns.append(column)
    return torch.stack(columns, dim=1)
