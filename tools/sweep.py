"""A small hyper-parameter sweep on the tiny testbed: every combination of the `--grid`
values, trained from the same shared warm-up per seed as `tools/ablate.py`, scored on
the held-out split by `maestro eval`.

    python tools/sweep.py --grid conductor.lr=3e-4,1e-3,3e-3 --grid conductor.ent_coef=0.01,0.03 \
        [--method maestro] [--seeds 1] [--steps 40] [--out runs/sweep]

Prints one row per setting (mean ± std over seeds, the columns of ablate.py) and
writes OUT/sweep.md. Finished runs are reused when the command is run again; with
`--out runs/ablation` the ablation's warm-up starts are reused too.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from ablate import COLUMNS, METHODS, evaluate, mean_std, train_method, train_start


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """["a.b=1,2", "c=x"] -> [("a.b", ["1", "2"]), ("c", ["x"])]; errors name the spec."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"error: --grid {spec!r}: expected key=v1,v2,...")
        grid.append((key, values.split(",")))
    return grid


def settings(grid: list[tuple[str, list[str]]]) -> list[tuple[str, ...]]:
    """Every combination as key=value overrides, in grid order."""
    keys = [k for k, _ in grid]
    return [tuple(f"{k}={v}" for k, v in zip(keys, combo))
            for combo in itertools.product(*(vs for _, vs in grid))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="append", required=True)
    parser.add_argument("--method", default="maestro", choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    args = parser.parse_args()
    out = args.out.resolve()
    lines = ["| setting | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for overrides in settings(parse_grid(args.grid)):
        tag = f"{args.method}__" + "__".join(o.replace("=", "-") for o in overrides)
        got = []
        for seed in args.seeds:
            start = train_start(out, seed)
            run = train_method(out, args.method, seed, args.steps, start, overrides, tag)
            got.append(evaluate(run, run / "eval", []))
        lines.append(f"| {' '.join(overrides)} | "
                     + " | ".join(mean_std([g[k] for g in got]) for k, _ in COLUMNS) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + (f"\n\n{args.method}, seeds {args.seeds}, {args.steps} steps "
                               "from the shared warm-up, held-out split, greedy.\n")
    (out / "sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
