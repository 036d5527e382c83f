"""The Conductor's cost: the tiny recipe's step with the Conductor and with the
equal-weights scalarizer, interleaved step by step in ONE run (same process, same
engine, same load on the machine), so the ratio is not the noise between two runs.

    .venv/bin/python -m bench.conductor_overhead [--pairs 6]

Order per pair is ABBA-balanced (C E, E C, ...) so a drift in machine load cancels.
Two figures: (1) the ratio of median step times, Conductor / equal, the whole effect
including anything around the Conductor (keeping h, its outer loop, syncs) but also
the noise of different sampled responses; (2) the direct cost, the Conductor's own
stages (scalarize + scalarizer_update) minus equal's, as a share of the step, the
figure the <= 1% target is judged on when (1) is within its noise.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from bench.common import median, quiet_machine, record, table
from bench.driver import STEP_KEY, bench_recipe, open_run, run_steps

OWN_STAGES = ("timing/scalarize", "timing/scalarizer_update")


def own_cost(row: dict) -> float:
    return sum(row.get(k, 0.0) for k in OWN_STAGES)


def summarize(rows: dict[str, list[dict]]) -> dict:
    """Median step and own-stage seconds per variant, the ratio and the direct share."""
    out = {name: {"step_s": median(r[STEP_KEY] for r in rs),
                  "own_s": median(own_cost(r) for r in rs), "steps": len(rs)}
           for name, rs in rows.items()}
    c, e = out["conductor"], out["equal"]
    out["step_ratio"] = c["step_s"] / e["step_s"]
    out["direct_share"] = (c["own_s"] - e["own_s"]) / c["step_s"]
    # a noise band: the spread of the step-time ratio between pairs of equal steps
    eq = sorted(r[STEP_KEY] for r in rows["equal"])
    out["equal_step_iqr_over_median"] = (eq[(3 * len(eq)) // 4] - eq[len(eq) // 4]) / e["step_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=6, help="Conductor/equal step pairs")
    p.add_argument("--warmup-steps", type=int, default=2)
    args = p.parse_args(argv)
    load = quiet_machine()
    recipe = bench_recipe("conductor_overhead")
    from maestro_megatron.scalarizers import build_scalarizer

    with open_run(recipe) as state:
        equal_recipe = replace(state.recipe, scalarizer=replace(state.recipe.scalarizer,
                                                                name="equal"))
        variants = {"conductor": state.scalarizer,
                    "equal": build_scalarizer(equal_recipe, d_model=state.models.cfg.hidden_size,
                                              device=state.device)}
        step = 1
        run_steps(state, step, args.warmup_steps)
        step += args.warmup_steps
        rows = {"conductor": [], "equal": []}
        for pair in range(args.pairs):
            order = ["conductor", "equal"] if pair % 2 == 0 else ["equal", "conductor"]
            for name in order:
                state.scalarizer = variants[name]
                rows[name] += run_steps(state, step, 1)
                step += 1
        state.scalarizer = variants["conductor"]
    s = summarize(rows)
    print(table(["scalarizer", "steps", "median step s", "scalarize + update s"],
                [[n, s[n]["steps"], s[n]["step_s"], s[n]["own_s"]]
                 for n in ("conductor", "equal")]))
    print(f"step time ratio conductor / equal: {s['step_ratio']:.3f} "
          f"(spread of equal steps, IQR / median: {s['equal_step_iqr_over_median']:.1%})")
    print(f"direct cost (Conductor's own stages minus equal's) / step: {s['direct_share']:.2%}"
          f" (target <= 1%)")
    record("conductor_overhead", {"pairs": args.pairs, "warmup_steps": args.warmup_steps}, s,
           load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
