"""Does the Conductor's per-category pattern repeat across seeds?

    python tools/weights_across_seeds.py RUN_DIR [RUN_DIR ...] [--last 10]

For each run (one seed each): the deterministic weights w(h) per category from
`conductor_weights.jsonl`, averaged over the last `--last` logged steps. Printed per
category: each seed's weights, its emphasised component (argmax), and the agreement
across seeds: the share of seeds whose argmax is the most common one, and the mean
pairwise Pearson correlation of the weight vectors (1: same shape, ~0: unrelated).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections import Counter
from pathlib import Path

from maestro_megatron.trainer.outputs import read_conductor_weights


def final_weights(records: list[dict], last: int) -> tuple[list[str], dict[str, list[float]]]:
    """(components, {category: mean w(h) over its last `last` logged steps})."""
    if not records:
        raise ValueError("no conductor weights logged")
    cats = sorted({c for r in records for c in r["weights"]})
    out = {}
    for cat in cats:  # a step logs only the categories it sampled
        tail = [r["weights"][cat] for r in records if cat in r["weights"]][-last:]
        out[cat] = [statistics.fmean(w[k] for w in tail) for k in range(len(tail[0]))]
    return records[-1]["components"], out


def argmax(weights: list[float]) -> int:
    return max(range(len(weights)), key=weights.__getitem__)


def agreement(per_seed: list[list[float]]) -> tuple[int, float, float | None]:
    """(most common argmax, share of seeds with it, mean pairwise Pearson correlation;
    None with fewer than 2 seeds or a constant vector)."""
    tops = [argmax(w) for w in per_seed]
    top, count = Counter(tops).most_common(1)[0]
    corrs = []
    for a, b in itertools.combinations(per_seed, 2):
        try:
            corrs.append(statistics.correlation(a, b))
        except statistics.StatisticsError:
            continue
    return top, count / len(tops), statistics.fmean(corrs) if corrs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--last", type=int, default=10)
    args = parser.parse_args()
    finals = [final_weights(read_conductor_weights(r), args.last) for r in args.runs]
    names = finals[0][0]
    print("| category | run | " + " | ".join(names) + " | emphasis |")
    print("|---" * (3 + len(names)) + "|")
    for cat in finals[0][1]:
        rows = [f[1][cat] for f in finals]
        for run, w in zip(args.runs, rows):
            print(f"| {cat} | {run.name} | " + " | ".join(f"{x:.2f}" for x in w)
                  + f" | {names[argmax(w)]} |")
        top, share, corr = agreement(rows)
        print(f"| {cat} | agreement | argmax {names[top]} in {share:.0%} of runs; mean "
              f"pairwise corr {'-' if corr is None else f'{corr:+.2f}'} |" + " |" * len(names))


if __name__ == "__main__":
    main()
