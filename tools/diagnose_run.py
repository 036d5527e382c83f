"""Diagnose a training run from its rollouts.jsonl (`run.log_rollouts=true`): does each
reward component track the utility inside groups, what does the scalarizer emphasise
per category over time, and where does the KL come from.

    python tools/diagnose_run.py RUN_DIR [--windows 3] [--json OUT.json]

Utility of a training response: exact match of its `<answer>` span with the reference
(`maestro eval`'s normalised exact match). It is meaningful where answers
are exact (the built-in `arith` category); for open categories it is reported but is
near 0 by construction.

Within-group correlation: for every group (one prompt, G responses) in which both the
component and the utility vary, the Pearson correlation of the G pairs; reported is the
mean over such groups and how many groups qualified. GRPO only sees differences inside a
group, so this, not the batch-level correlation, is what a component can teach.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from maestro_megatron.eval.answers import exact_match, extract_answer
from maestro_megatron.trainer.outputs import read_rollouts


def utility(response: str, reference: str | None) -> float:
    """1.0 when the response's answer span equals the reference (maestro eval's
    normalised exact match), else 0.0 (also without a reference)."""
    return float(bool(exact_match(extract_answer(response), reference)))


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation; None when either side is constant (undefined)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 1e-12 or syy <= 1e-12:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def group_correlations(records: list[dict], components: list[str]
                       ) -> dict[str, tuple[float | None, int, int]]:
    """{component: (mean within-group corr with utility, groups used, groups total)}."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["step"], r["prompt_index"])].append(r)
    out = {}
    for name in components:
        corrs = [c for rs in groups.values()
                 if (c := pearson([x["rewards"][name] for x in rs],
                                  [x["utility"] for x in rs])) is not None]
        out[name] = (statistics.fmean(corrs) if corrs else None, len(corrs), len(groups))
    return out


def group_zscores(records: list[dict], components: list[str]) -> None:
    """Add r["z"]: each component z-scored within its group (population std; 0 when the
    group is constant), the per-component normalisation the scalarizer sees."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["step"], r["prompt_index"])].append(r)
    for rs in groups.values():
        for r in rs:
            r["z"] = {}
        for name in components:
            xs = [r["rewards"][name] for r in rs]
            mean, std = statistics.fmean(xs), statistics.pstdev(xs)
            for r, x in zip(rs, xs):
                r["z"][name] = (x - mean) / std if std > 1e-8 else 0.0


def action_hit_rate(records: list[dict], components: list[str]) -> float | None:
    """How often the sampled emphasis is the component on which the response stands
    highest in its group (argmax of its z-scores, among responses where the max is
    unique): what a Conductor that maximises its own advantage learns to pick.
    Chance is 1/K. None without actions (baselines)."""
    hits = total = 0
    for r in records:
        if r.get("action") is None or r["action"] >= len(components):
            continue
        z = [r["z"][n] for n in components]
        best = max(z)
        if z.count(best) > 1:
            continue
        total += 1
        hits += int(z.index(best) == r["action"])
    return hits / total if total else None


def action_advantages(records: list[dict], components: list[str]
                      ) -> dict[str, tuple[float, float, int] | None]:
    """{component: (mean advantage, its standard error, responses)} over the responses
    whose sampled emphasis was that component (None: never sampled, or 1 response).

    This is the Conductor's meta-reward per action for contexts it cannot tell apart.
    With per-group z-scored components every component has mean 0 inside each group, so
    for a category as a whole these means are 0 up to noise (and the std-normalisation
    of A): a per-category emphasis is only learnable through what h says about each
    response's standing in its group, not from the category itself."""
    out: dict[str, tuple[float, float, int] | None] = {}
    for j, name in enumerate(components):
        xs = [r["advantage"] for r in records if r.get("action") == j]
        out[name] = ((statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs)),
                      len(xs)) if len(xs) > 1 else None)
    return out


def windows(records: list[dict], count: int) -> list[tuple[int, int, list[dict]]]:
    """Split by step into `count` equal windows: [(first step, last step, records)]."""
    steps = sorted({r["step"] for r in records})
    size = max(1, math.ceil(len(steps) / count))
    out = []
    for i in range(0, len(steps), size):
        chosen = set(steps[i:i + size])
        out.append((min(chosen), max(chosen), [r for r in records if r["step"] in chosen]))
    return out


def diagnose(records: list[dict], num_windows: int) -> dict:
    """Per category and step window: utility rate, within-group correlations, mean
    weights used, KL, length."""
    for r in records:
        r["utility"] = utility(r["response"], r["reference"])
    components = list(records[0]["rewards"])
    group_zscores(records, components)
    report: dict = {"components": components, "categories": {}}
    for task in sorted({r["task"] for r in records}):
        rows, mine = [], [r for r in records if r["task"] == task]
        for first, last, part in windows(mine, num_windows):
            corr = group_correlations(part, components)
            k = len(components)
            rows.append({
                "steps": [first, last], "responses": len(part),
                "utility": statistics.fmean(r["utility"] for r in part),
                "corr": {n: corr[n][0] for n in components},
                "groups_with_signal": {n: corr[n][1] for n in components},
                "groups": corr[components[0]][2],
                "weights": [statistics.fmean(r["weights"][j] for r in part) for j in range(k)],
                "rewards": {n: statistics.fmean(r["rewards"][n] for r in part)
                            for n in components},
                "action_hit": action_hit_rate(part, components),
                "kl_seq": statistics.fmean(r["kl_seq"] for r in part),
                "num_tokens": statistics.fmean(r["num_tokens"] for r in part)})
        report["categories"][task] = rows
        report.setdefault("action_advantage", {})[task] = action_advantages(mine, components)
    return report


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _hit(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(report: dict) -> str:
    """Markdown tables, one per category."""
    names = report["components"]
    lines = []
    for task, rows in report["categories"].items():
        lines += [f"### {task}", "",
                  "| steps | utility | " + " | ".join(f"corr {n}" for n in names)
                  + " | " + " | ".join(f"w {n}" for n in names) + " | hit | KL | tokens |",
                  "|---" * (2 + 2 * len(names) + 3) + "|"]
        for r in rows:
            corr = " | ".join(f"{_fmt(r['corr'][n])} ({r['groups_with_signal'][n]})"
                              for n in names)
            w = " | ".join(f"{x:.2f}" for x in r["weights"])
            lines.append(f"| {r['steps'][0]}-{r['steps'][1]} | {r['utility']:.3f} | {corr} "
                         f"| {w} | {_hit(r['action_hit'])} | {r['kl_seq']:.3f} "
                         f"| {r['num_tokens']:.1f} |")
        lines.append("")
    if any(v is not None for adv in report.get("action_advantage", {}).values()
           for v in adv.values()):
        lines += ["### mean advantage per sampled emphasis (all steps; ± standard error)", "",
                  "| category | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
        for task, adv in report["action_advantage"].items():
            lines.append(f"| {task} | " + " | ".join(
                "-" if adv[n] is None else f"{adv[n][0]:+.3f} ± {adv[n][1]:.3f} ({adv[n][2]})"
                for n in names) + " |")
        lines.append("")
    lines.append("corr: mean within-group Pearson correlation of the component with exact "
                 "match (groups where both vary, in brackets); w: mean weights used; hit: how "
                 "often the sampled emphasis is the component on which the response ranks highest "
                 "in its group (chance 1/K; baselines: -).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.run_dir / "rollouts.jsonl").is_file():
        raise SystemExit(f"error: {args.run_dir / 'rollouts.jsonl'} not found (train with "
                         "run.log_rollouts=true)")
    report = diagnose(read_rollouts(args.run_dir), args.windows)
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
