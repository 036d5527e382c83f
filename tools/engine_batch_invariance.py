"""Do sampled tokens depend on how requests are batched over engines?

Every request carries its own seed (run seed, step, global prompt index), so with
exact arithmetic the responses do not depend on how many engines share a step's
prompts. A real engine's numerics can still depend on the batch it runs a request in
(other sequences in the batch change kernel shapes and reduction orders). This script
samples the same requests (same per-request seeds) as

- ``one``: one engine, all prompts in one generate call (placement leader),
- ``two``: two engines (two real vLLM instances), each the half of the prompts that
  its data-parallel replica owns (placement replica, DP=2),
- ``quarters``: engine one, four calls of a quarter each (DP=4's batch sizes),
- ``single``: engine one, one prompt per call,

and counts the sampled tokens that differ from ``one`` (position by position; after a
response's first differing token the rest of it is counted as different too, since it
continues from another prefix), plus the largest sampler-logprob difference over the
tokens that agree. Prints one table.

    python tools/engine_batch_invariance.py [--model runs/tiny_cpu/hf_warmup]
        [--prompts 32] [--group-size 4] [--steps 2]

--model: an HF directory whose tokenizer has the chat template (any tiny run's
`hf_warmup` or `hf_final`); the built-in training prompts, encoded as the tiny recipe
does, are the requests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _prompt_ids(model: Path, num_prompts: int) -> list[list[int]]:
    """The first `num_prompts` built-in training prompts as the tiny recipe encodes them."""
    from transformers import AutoTokenizer

    from maestro_megatron.config import load_recipe
    from maestro_megatron.data.prompts import load_data_config
    from maestro_megatron.trainer.rollouts import encode_prompt

    recipe = load_recipe(REPO / "recipes" / "tiny_cpu.yaml")
    tokenizer = AutoTokenizer.from_pretrained(model)
    records = load_data_config(recipe.data)[:num_prompts]
    return [encode_prompt(tokenizer, r.prompt, recipe.data) for r in records]


def _sample(engine, prompts, group_size, sampling, chunk: int) -> list:
    """Responses of all prompts, generated `chunk` prompts per call; per-request seeds
    from the global prompt index as the trainer does (first_index)."""
    out = []
    for first in range(0, len(prompts), chunk):
        out += engine.generate(prompts[first:first + chunk], group_size, sampling,
                               first_index=first)
    return [r for g in out for r in g.responses]


def _compare(ref: list, other: list) -> tuple[int, int, int, float]:
    """(tokens compared, tokens that differ, responses that differ, max |logprob diff|
    over agreeing tokens)."""
    total = differ = responses = 0
    worst = 0.0
    for a, b in zip(ref, other, strict=True):
        n = max(len(a.token_ids), len(b.token_ids))
        same = 0
        while same < min(len(a.token_ids), len(b.token_ids)) and \
                a.token_ids[same] == b.token_ids[same]:
            same += 1
        total += n
        differ += n - same
        responses += same < n
        if same:
            gap = (a.rollout_logprobs[:same] - b.rollout_logprobs[:same]).abs().max().item()
            worst = max(worst, gap)
    return total, differ, responses, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs/tiny_cpu/hf_warmup")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="sampling seeds (run steps)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    from maestro_megatron.rollout import SamplingConfig, build_engine

    model = args.model
    if not (model / "config.json").is_file():
        raise SystemExit(f"error: {model} is not an HF model directory (run the tiny "
                         "recipe first, or pass --model)")
    prompts = _prompt_ids(model, args.prompts)
    engines = [build_engine("vllm", str(model), seed=0, max_model_len=128) for _ in range(2)]
    half = len(prompts) // 2
    totals = {name: [0, 0, 0, 0.0] for name in ("two", "quarters", "single")}
    for step in range(1, args.steps + 1):
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens,
                                  seed=step)
        one = _sample(engines[0], prompts, args.group_size, sampling, len(prompts))
        second = engines[1].generate(prompts[half:], args.group_size, sampling,
                                     first_index=half)
        runs = {"two": _sample(engines[0], prompts[:half], args.group_size, sampling, half)
                + [r for g in second for r in g.responses],
                "quarters": _sample(engines[0], prompts, args.group_size, sampling,
                                    max(1, len(prompts) // 4)),
                "single": _sample(engines[0], prompts, args.group_size, sampling, 1)}
        for name, responses in runs.items():
            t, d, r, w = _compare(one, responses)
            acc = totals[name]
            acc[0] += t
            acc[1] += d
            acc[2] += r
            acc[3] = max(acc[3], w)
    for engine in engines:
        engine.close()
    num_responses = args.steps * len(prompts) * args.group_size
    print(f"{num_responses} responses of {len(prompts)} prompts x G={args.group_size} x "
          f"{args.steps} seeds, compared with one engine sampling all in one batch:")
    print(f"{'split':<10} {'tokens':>7} {'differ':>7} {'responses differ':>17} "
          f"{'max |dlogprob| (agreeing tokens)':>33}")
    for name, (t, d, r, w) in totals.items():
        print(f"{name:<10} {t:>7} {d:>7} {f'{r}/{num_responses}':>17} {w:>33.1e}")


if __name__ == "__main__":  # vLLM's engine processes re-import this file (spawn)
    main()
