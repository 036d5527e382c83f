"""The few lines `maestro train` ends with: where the outputs are, how the run went."""

from __future__ import annotations

from pathlib import Path

from maestro_megatron.trainer.outputs import METRICS_FILE, TB_DIR, read_metrics

HEADLINE = ("reward/scalar", "reward/fmt", "reward/pref", "kl/seq")
"""Metrics compared between the first and the last `window` steps."""
OUTPUTS = (("policy (HF)", ("hf_final",)), ("Conductor", ("conductor.pt",)),
           ("metrics", (METRICS_FILE, TB_DIR)),
           ("plots", ("rewards.png", "conductor_weights.png")))
"""(label, names in the run directory); absent ones are left out (e.g. a baseline
scalarizer writes no conductor.pt)."""


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


def format_summary(run_dir: Path, window: int = 10) -> str:
    """The run's outputs and, per headline metric, the mean over the first `window`
    steps -> the mean over the last `window` steps (from metrics.jsonl)."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else []
    lines = [f"done: {len(rows)} steps logged; run directory {run_dir}"]
    for label, names in OUTPUTS:
        found = [str(run_dir / n) for n in names if (run_dir / n).exists()]
        if found:
            lines.append(f"  {label:<12} {', '.join(found)}")
    if rows:
        first, last = rows[:window], rows[-window:]
        span = (f"steps {first[0]['step']}-{first[-1]['step']} -> "
                f"{last[0]['step']}-{last[-1]['step']}")
        lines.append(f"  mean over {span}:")
        for key in HEADLINE:
            a, b = _mean(first, key), _mean(last, key)
            if a is not None and b is not None:
                lines.append(f"    {key:<14} {a:8.4f} -> {b:8.4f}")
    return "\n".join(lines)
