"""Where a step of the tiny recipe spends its time: each stage (rollout, the policy /
reference / proxy forwards, each reward component, scalarize, metrics, update, the
Conductor's outer loop, refit, checkpoint) as median seconds and share of the step,
with peak memory of the trainer and of the whole process tree (the vLLM engine too).

    .venv/bin/python -m bench.step_anatomy [--steps 8] [--warmup-steps 2] [--checkpoints 2]

The stage timings are the trainer's own `timing/*` metrics (trainer/loop.py); the
checkpoint is the trainer's `save_step`, timed here (a run writes one only every
run.save_every steps). Nested entries (forward/*, reward/*) are parts of their stage.
"""

from __future__ import annotations

import argparse
import resource
import time

from bench.common import PeakRSS, median, quiet_machine, record, table
from bench.driver import STEP_KEY, bench_recipe, open_run, run_steps

STAGES = ["rollout", "forward", "forward/policy", "forward/reference", "forward/proxy",
          "rewards", "reward/*", "scalarize", "metrics", "train", "scalarizer_update",
          "refit", "checkpoint"]
TOP_LEVEL = ["rollout", "forward", "rewards", "scalarize", "metrics", "train",
             "scalarizer_update", "refit"]


def stage_rows(rows: list[dict], checkpoint_s: list[float]) -> list[list]:
    """[name, median s, share of the median step] in STAGES order (reward/* expanded)."""
    step = median(r[STEP_KEY] for r in rows)
    names = []
    for stage in STAGES:
        if stage == "reward/*":
            names += sorted({k[len("timing/"):] for r in rows for k in r
                             if k.startswith("timing/reward/")})
        elif stage != "checkpoint":
            names.append(stage)
    out = []
    for name in names:
        values = [r[f"timing/{name}"] for r in rows if f"timing/{name}" in r]
        if values:
            indent = "  " if "/" in name else ""
            out.append([indent + name, median(values), median(values) / step])
    top = sum(median(r[f"timing/{s}"] for r in rows if f"timing/{s}" in r)
              for s in TOP_LEVEL if any(f"timing/{s}" in r for r in rows))
    out.append(["other (logging, glue)", max(step - top, 0.0), max(step - top, 0.0) / step])
    if checkpoint_s:
        ck = median(checkpoint_s)
        out.append(["checkpoint (when saved)", ck, ck / step])
    out.append(["step", step, 1.0])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="measured steps")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps run first, not counted")
    p.add_argument("--checkpoints", type=int, default=2, help="save_step calls to time")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, e.g. grpo.group_size=8")
    args = p.parse_args(argv)
    load = quiet_machine()
    recipe = bench_recipe("step_anatomy", args.set)
    with PeakRSS() as mem, open_run(recipe) as state:
        run_steps(state, 1, args.warmup_steps)
        rows = run_steps(state, 1 + args.warmup_steps, args.steps)
        checkpoint_s = []
        for i in range(args.checkpoints):
            from maestro_megatron.trainer.checkpoint import save_step

            start = time.perf_counter()
            save_step(state, args.warmup_steps + args.steps + i)
            checkpoint_s.append(time.perf_counter() - start)
    table_rows = stage_rows(rows, checkpoint_s)
    print(table(["stage", "median s", "share of step"], table_rows))
    trainer_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS: trainer {trainer_peak / 2**30:.2f} GiB, trainer + vLLM engine "
          f"processes {mem.tree_peak / 2**30:.2f} GiB (sampled every 20 ms)")
    top = max((r for r in table_rows if r[0].strip() in TOP_LEVEL), key=lambda r: r[1])
    print(f"largest stage: {top[0]} ({top[2]:.0%} of the step)")
    record("step_anatomy",
           {"steps": args.steps, "warmup_steps": args.warmup_steps, "overrides": args.set},
           {"stages": {r[0].strip(): {"median_s": r[1], "share": r[2]} for r in table_rows},
            "largest_stage": top[0], "trainer_peak_rss_bytes": trainer_peak,
            "tree_peak_rss_bytes": mem.tree_peak,
            "response_length": median(r["response/length"] for r in rows)},
           load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
