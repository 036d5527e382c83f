"""Side-by-side comparison of evaluations of several runs on the same benchmark.

Inputs are eval output directories (summary.json + samples.jsonl). Samples are paired
by (prompt key, sample index): the same prompt and reference answered by each run.
For each task and overall, and each score (judge verdict, exact / option match), it
reports every run's accuracy and, against the FIRST run, the paired bootstrap interval
of the difference (`bootstrap.paired_difference`) over the pairs both runs scored.
Writes comparison.json and a bar chart comparison.png (accuracy per task and run,
95% interval as error bars).
"""

from __future__ import annotations

import json
from pathlib import Path

from maestro_megatron.errors import UserError
from maestro_megatron.eval.bootstrap import bootstrap_mean, paired_difference

SCORES = {"judge": lambda s: None if s["judge"] not in ("correct", "incorrect")
          else s["judge"] == "correct",
          "exact": lambda s: s["exact_match"], "option": lambda s: s["option_match"]}


def load_eval(path: str | Path) -> tuple[dict, list[dict]]:
    """(summary, samples) of an eval output directory; UserError when it is not one."""
    path = Path(path)
    if not (path / "summary.json").is_file() or not (path / "samples.jsonl").is_file():
        raise UserError(f"{path}: not an eval output directory (summary.json, samples.jsonl)")
    summary = json.loads((path / "summary.json").read_text())
    samples = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]
    return summary, samples


def _scores(samples: list[dict], score: str, task: str | None) -> dict[tuple, float]:
    fn = SCORES[score]
    return {(s["key"], s["sample"]): float(fn(s)) for s in samples
            if (task is None or s["task"] == task) and fn(s) is not None}


def _block(runs: list[list[dict]], score: str, task: str | None) -> list[dict]:
    base = _scores(runs[0], score, task)
    out = []
    for samples in runs:
        mine = _scores(samples, score, task)
        acc = bootstrap_mean(list(mine.values()))
        pairs = sorted(set(base) & set(mine))
        diff = paired_difference([base[k] for k in pairs], [mine[k] for k in pairs])
        out.append({"accuracy": acc.as_dict() if acc else None, "pairs": len(pairs),
                    "diff_vs_first": diff.as_dict() if diff else None})
    return out


def compare(eval_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """Compare the evaluations in `eval_dirs` (first = baseline); write comparison.json
    and comparison.png into `out_dir`; return the comparison."""
    loaded = [load_eval(d) for d in eval_dirs]
    benchmarks = {s["benchmark"] for s, _ in loaded}
    if len(benchmarks) > 1:
        raise UserError(f"--compare: evaluations of different benchmarks {sorted(benchmarks)}")
    names = [s["name"] for s, _ in loaded]
    if len(set(names)) < len(names):  # e.g. two evaluations of one run: add the folder
        names = [f"{n}/{Path(d).name}" for n, d in zip(names, eval_dirs)]
    runs = [samples for _, samples in loaded]
    tasks = list(dict.fromkeys(s["task"] for samples in runs for s in samples))
    scores = [k for k in ("judge", "exact", "option") if any(_scores(r, k, None) for r in runs)]
    result = {"runs": names, "dirs": [str(d) for d in eval_dirs], "scores": {}}
    for score in scores:
        result["scores"][score] = {task or "all": _block(runs, score, task)
                                   for task in [*tasks, None]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    if scores:
        plot_comparison(result, scores[0], out_dir / "comparison.png")
    return result


def _pct(interval: dict | None) -> str:
    if interval is None:
        return "-"
    return f"{100 * interval['value']:+.1f} [{100 * interval['low']:+.1f}, " \
           f"{100 * interval['high']:+.1f}]"


def format_comparison(result: dict) -> str:
    """One table per score: rows = tasks, columns = runs (accuracy %, and for the
    others the paired difference to the first run in points with its 95% interval)."""
    names = result["runs"]
    lines = []
    for score, blocks in result["scores"].items():
        header = ["task", f"{names[0]} %"] + [f"{n} % (diff vs {names[0]})" for n in names[1:]]
        rows = []
        for task, runs in blocks.items():
            cells = [task, _acc(runs[0])]
            cells += [f"{_acc(r)} ({_pct(r['diff_vs_first'])}, {r['pairs']} pairs)"
                      for r in runs[1:]]
            rows.append(cells)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines.append(f"{score} accuracy:")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.append("")
    return "\n".join(lines)


def _acc(run: dict) -> str:
    return "-" if run["accuracy"] is None else f"{100 * run['accuracy']['value']:.1f}"


def plot_comparison(result: dict, score: str, path: Path) -> None:
    """Grouped bars: x = tasks (+ all), one bar per run, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks = result["scores"][score]
    tasks = list(blocks)
    num_runs = len(result["runs"])
    width = 0.8 / num_runs
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(tasks) * max(1, num_runs / 2)), 3.6))
    for r, name in enumerate(result["runs"]):
        vals, lo, hi = [], [], []
        for task in tasks:
            acc = blocks[task][r]["accuracy"]
            v = 100 * acc["value"] if acc else 0.0
            vals.append(v)
            lo.append(v - 100 * acc["low"] if acc else 0.0)
            hi.append(100 * acc["high"] - v if acc else 0.0)
        x = np.arange(len(tasks)) + (r - (num_runs - 1) / 2) * width
        ax.bar(x, vals, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel(f"{score} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
