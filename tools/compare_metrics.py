"""Compare two runs' metrics.jsonl bit for bit (timings and wall-clock stamps excluded).

    python tools/compare_metrics.py RUN_A RUN_B

A refactor that does not touch the math must give identical numbers at the same
thread count (DESIGN.md section 9). Exit 0 when every step's every non-timing metric
is equal (as stored: JSON floats round-trip exactly), 1 with the first differences.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IGNORED_PREFIXES = ("timing/",)
IGNORED_KEYS = {"time"}


def _rows(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _kept(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)}


def compare(run_a: Path, run_b: Path) -> list[str]:
    """Human-readable differences (empty when the runs match)."""
    a, b = _rows(run_a), _rows(run_b)
    problems = [] if len(a) == len(b) else [f"{len(a)} vs {len(b)} steps"]
    for ra, rb in zip(a, b):
        ka, kb = _kept(ra), _kept(rb)
        for key in sorted(set(ka) | set(kb)):
            if ka.get(key) != kb.get(key):
                problems.append(f"step {ra.get('step')}: {key}: {ka.get(key)!r} != "
                                f"{kb.get(key)!r}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    problems = compare(Path(argv[0]), Path(argv[1]))
    steps = len(_rows(Path(argv[0])))
    if problems:
        print(f"{len(problems)} differences; first ones:")
        print("\n".join(problems[:20]))
        return 1
    print(f"identical: {steps} steps, every non-timing metric equal bit for bit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
