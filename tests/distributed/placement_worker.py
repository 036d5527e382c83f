"""TP=2 on gloo: the reward model on the TP leader only (scores broadcast to the peer),
and the reference offloaded to the host between its forwards; writes one JSON per rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from maestro_megatron.config import load_recipe
from maestro_megatron.data.packing import pack_sequences
from maestro_megatron.megatron.forward import forward_logprobs
from maestro_megatron.megatron.model import build_model
from maestro_megatron.megatron.offload import is_offloaded, offload, resident
from maestro_megatron.megatron.parallel import init_distributed
from maestro_megatron.megatron.scorer_placement import place_scorer
from maestro_megatron.scorers import build_scorer


def main(out: Path) -> None:
    recipe = load_recipe("recipes/tiny_cpu.yaml", ["parallel.tensor_parallel=2",
                                                    "rewards.pref.placement=tp_leader",
                                                    "memory.offload_reward_model=true"])
    groups = init_distributed(recipe.parallel, recipe.model, seed=1)
    built = []
    scorer = place_scorer(recipe.rewards.pref, recipe.memory, groups,
                          lambda: built.append(1) or build_scorer(recipe.rewards.pref))
    prompts = ["What is 2 + 3?", "Name a colour."]
    responses = ["<think>add</think><answer>5</answer>", "<think>hm</think><answer>blue</answer>"]
    scores = scorer.score(prompts, responses, ["5", "red"])

    cfg = recipe.model
    stage = dict(pp_rank=groups.pp_rank, pp_size=groups.pp_size)
    torch.manual_seed(0)
    ref = build_model(cfg, recipe.parallel, recipe.precision, freeze=True, **stage)
    batch = pack_sequences([[1, 5, 9, 4]] * 4, [[7, 8, 3], [2, 2], [6], [9, 1, 1, 4]], 0, 64)
    batch = batch.slice(0, 4)
    kw = dict(micro_batch_size=2, vocab_size=cfg.vocab_size)
    plain = forward_logprobs(ref, batch, groups, **kw)
    offload(ref)
    numel_between = sum(p.numel() for m in ref for p in m.parameters())
    with resident(ref, "cpu"):
        swapped = forward_logprobs(ref, batch, groups, **kw)
        numel_inside = sum(p.numel() for m in ref for p in m.parameters())
    json.dump({"built_scorer": bool(built), "scores": scores.tolist(),
               "offloaded": is_offloaded(ref), "numel_between": numel_between,
               "numel_inside": numel_inside,
               "same_logprobs": torch.equal(plain.logprobs, swapped.logprobs),
               "same_entropy": torch.equal(plain.entropy, swapped.entropy)},
              open(out / f"rank{groups.rank}.json", "w"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
