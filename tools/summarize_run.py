"""Print a run's progress table (means over the first and last `--window` steps) and the
Conductor's final weights per task category, as Markdown (the README's tables).

    python tools/summarize_run.py runs/tiny_cpu [--window 10]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from maestro_megatron.trainer.outputs import read_conductor_weights, read_metrics

KEYS = ("reward/scalar", "reward/mean_raw", "reward/fmt", "reward/pref", "reward/ent",
        "reward/ppl", "reward/len", "kl/seq", "response/length", "conductor/policy_entropy")


def summarize(run_dir: Path, window: int) -> str:
    rows = read_metrics(run_dir)
    first, last = rows[:window], rows[-window:]
    lines = [f"| metric | steps {first[0]['step']}-{first[-1]['step']} "
             f"| steps {last[0]['step']}-{last[-1]['step']} |", "|---|---|---|"]
    for key in KEYS:
        if key in rows[0]:
            lines.append(f"| {key} | {statistics.mean(r[key] for r in first):.3f} "
                         f"| {statistics.mean(r[key] for r in last):.3f} |")
    history = read_conductor_weights(run_dir)
    if history:
        final = history[-1]
        lines += ["", "| category | " + " | ".join(final["components"]) + " |",
                  "|---" * (len(final["components"]) + 1) + "|"]
        for task, weights in sorted(final["weights"].items()):
            lines.append(f"| {task} | " + " | ".join(f"{w:.2f}" for w in weights) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    print(summarize(args.run_dir, args.window))


if __name__ == "__main__":
    main()
