"""How the tiny recipe's step time grows as G (responses per prompt), N (prompts per
step) and the response length double, 3 points each, with the stages that grow; a PNG.

    .venv/bin/python -m bench.scaling [--steps 3] [--axes G N L] [--plot bench/scaling.png]

G and N start from the warmed policy (its responses end at EOS, ~20 tokens). The
length axis uses the random-init policy, which almost never samples EOS, so the cap
rollout.max_new_tokens (12, 24, 48) IS the response length. Each axis runs in its own
process (one engine, one setup); the points of an axis are interleaved into that one
run by changing the recipe between steps (bench/driver.py `swap_recipe`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.common import REPO, median, quiet_machine, record, table
from bench.driver import STEP_KEY, bench_recipe, open_run, run_steps, swap_recipe

AXES = {"G": [2, 4, 8], "N": [4, 8, 16], "L": [12, 24, 48]}
STAGES = ("rollout", "forward", "rewards", "train", "refit")


def sections(recipe, axis: str, value: int) -> dict:
    g, ro = recipe.grpo, recipe.rollout
    if axis == "G":
        return {"grpo": replace(g, group_size=value)}
    if axis == "N":
        return {"grpo": replace(g, num_prompts_per_step=value)}
    return {"rollout": replace(ro, max_new_tokens=value)}


def measure_axis(axis: str, steps: int) -> list[dict]:
    """In this process: one run, each point `steps` measured steps after one unmeasured."""
    recipe = bench_recipe(f"scaling_{axis}", kind="random_init" if axis == "L" else "warmup")
    points, step = [], 1
    with open_run(recipe) as state:
        base = state.recipe
        for value in AXES[axis]:
            swap_recipe(state, **sections(base, axis, value))
            run_steps(state, step, 1)  # a new shape: the first step pays for it
            rows = run_steps(state, step + 1, steps)
            step += steps + 1
            responses = state.recipe.grpo.num_prompts_per_step * state.recipe.grpo.group_size
            points.append({"axis": axis, "value": value, "responses": responses,
                           "step_s": median(r[STEP_KEY] for r in rows),
                           "response_length": median(r["response/length"] for r in rows),
                           **{s: median(r[f"timing/{s}"] for r in rows) for s in STAGES}})
    return points


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = sorted({p["axis"] for p in points}, key=list(AXES).index)
    fig, subplots = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.4), squeeze=False)
    labels = {"G": "G (responses per prompt)", "N": "N (prompts per step)",
              "L": "response length (tokens, capped)"}
    for ax, axis in zip(subplots[0], axes):
        pts = [p for p in points if p["axis"] == axis]
        xs = [p["value"] for p in pts]
        ax.plot(xs, [p["step_s"] for p in pts], "o-", label="step", color="black")
        for stage in STAGES:
            ax.plot(xs, [p[stage] for p in pts], ".--", label=stage)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(labels[axis])
        ax.set_ylabel("median seconds")
    subplots[0][0].legend(fontsize=7)
    fig.suptitle("tiny recipe: step time as one size doubles (others at the recipe's)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="measured steps per point")
    p.add_argument("--axes", nargs="*", default=list(AXES), choices=list(AXES))
    p.add_argument("--plot", type=Path, default=REPO / "bench" / "scaling.png")
    p.add_argument("--one-axis", help=argparse.SUPPRESS)  # the per-axis child process
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    load = quiet_machine()
    if args.one_axis:
        args.out.write_text(json.dumps(measure_axis(args.one_axis, args.steps)))
        return 0
    points = []
    for axis in args.axes:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            subprocess.run([sys.executable, "-m", "bench.scaling", "--one-axis", axis,
                            "--steps", str(args.steps), "--out", tmp.name],
                           check=True, cwd=REPO)
            points += json.loads(Path(tmp.name).read_text())
    print(table(["axis", "value", "responses", "resp. tokens", "step s", *STAGES],
                [[p["axis"], p["value"], p["responses"], p["response_length"], p["step_s"],
                  *(p[s] for s in STAGES)] for p in points]))
    plot(points, args.plot)
    print(f"plot: {args.plot}")
    record("scaling", {"steps": args.steps, "axes": args.axes}, {"points": points},
           load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
