"""The ablation table: train the tiny recipe with every scalarizer / baseline over several
seeds from one shared warm-up per seed, evaluate each on the held-out split of the
built-in prompts, and write a table (mean +- std over seeds) and a plot.

    python tools/ablate.py [--methods maestro equal ...] [--seeds 1 2 3] [--steps 60]
                           [--out runs/ablation] [--judge-url URL --judge-model NAME]
                           [--readme README.md]

Per seed, one start run (`recipes/tiny_cpu_equal.yaml`, warm-up then 1 step) writes
`hf_warmup`; every method of that seed starts from it (`model.hf_path`, no warm-up of
its own), so methods differ only in what they do after the warm-up. The start itself
is evaluated as the "warm-up (start)" row. Each training run keeps its rollouts
(`run.log_rollouts`) for `tools/diagnose_run.py`. Finished runs and evaluations are
skipped when the command is run again (delete `--out` to start over).

Utility (held-out `test` rows, greedy): exact match of the `<answer>` span on `arith`,
format rate and mean pref (embedding similarity to the reference) on all, and judge
accuracy when a judge is given. None of these is what GRPO maximised directly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # name -> (recipe, extra overrides)
    "maestro": ("recipes/tiny_cpu.yaml", ()),
    "equal": ("recipes/tiny_cpu_equal.yaml", ()),
    "random": ("recipes/tiny_cpu_random.yaml", ()),
    "dynaopt": ("recipes/tiny_cpu_dynaopt.yaml", ()),
    "nover": ("recipes/tiny_cpu_nover.yaml", ()),
    "em_grpo": ("recipes/tiny_cpu_em_grpo.yaml", ()),
    "gdpo": ("recipes/tiny_cpu_gdpo.yaml", ()),
    "sft": ("recipes/tiny_cpu_sft.yaml", ()),
}
START = "start"
COLUMNS = (("arith_exact", "arith exact"), ("explain_exact", "explain exact"),
           ("story_exact", "story exact"), ("format_rate", "format rate"),
           ("pref", "pref"), ("judge", "judge accuracy"))
README_BEGIN, README_END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def maestro_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "maestro_megatron.cli", *args]


def run_logged(cmd: list[str], log: Path) -> float:
    """Run `cmd` with output to `log`; seconds taken. A failure names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"error: {' '.join(cmd[2:5])} failed (exit {code}); see {log}:\n  "
                         + "\n  ".join(tail))
    return time.perf_counter() - start


def train_start(out: Path, seed: int) -> Path:
    """The shared warm-up of `seed`: its hf_warmup directory."""
    run = out / START / f"seed_{seed}"
    if not (run / "FINISHED").exists():
        run_logged(maestro_cmd("train", "recipes/tiny_cpu_equal.yaml", f"run.seed={seed}",
                               f"scalarizer.seed={seed}", "run.num_steps=1",
                               f"run.output_dir={run}", "run.overwrite=true",
                               "run.progress=false"), run.with_suffix(".log"))
    return run / "hf_warmup"


def train_method(out: Path, method: str, seed: int, steps: int, start: Path,
                 overrides: tuple[str, ...] = (), tag: str | None = None) -> Path:
    """Train `method` from the seed's warm-up; `overrides` (key=value) after the
    recipe's, the run named `tag` (default: the method)."""
    run = out / (tag or method) / f"seed_{seed}"
    if (run / "FINISHED").exists():
        return run
    recipe, extra = METHODS[method]
    seconds = run_logged(maestro_cmd(
        "train", recipe, f"model.hf_path={start}", "warmup.num_steps=0",
        f"run.seed={seed}", f"scalarizer.seed={seed}", f"run.num_steps={steps}",
        f"run.output_dir={run}", "run.overwrite=true", "run.progress=false",
        "run.log_rollouts=true", *extra, *overrides), run.with_suffix(".log"))
    (run / "wall_seconds").write_text(f"{seconds:.1f}\n")
    return run


def start_generation() -> list[str]:
    """The trained runs' generation length for the start's bare HF directory (it has no
    recipe, and maestro eval's default there is 256 new tokens)."""
    from maestro_megatron.config import load_recipe

    recipe = load_recipe(ROOT / METHODS["equal"][0], [])
    return ["--max-new-tokens", str(recipe.rollout.max_new_tokens)]


def evaluate(target: Path, out_dir: Path, judge: list[str], extra: list[str] = ()) -> dict:
    """`maestro eval` of a run or HF directory on the built-in test split -> utility."""
    summary = out_dir / "summary.json"
    if not summary.exists():
        run_logged(maestro_cmd("eval", str(target), "--split", "test", "--pref", "--out",
                               str(out_dir), *judge, *extra), out_dir.with_suffix(".log"))
    return utility(json.loads(summary.read_text()))


def utility(summary: dict) -> dict[str, float | None]:
    """The table's columns from `maestro eval`'s summary.json (intervals -> their mean)."""
    def value(block: dict | None, key: str) -> float | None:
        got = (block or {}).get(key)
        return got["value"] if isinstance(got, dict) else got

    overall, tasks = summary["overall"], summary["tasks"]
    return {"arith_exact": value(tasks.get("arith"), "exact_match"),
            "explain_exact": value(tasks.get("explain"), "exact_match"),
            "story_exact": value(tasks.get("story"), "exact_match"),
            "format_rate": value(overall, "format_rate"),
            "pref": value(overall, "pref_mean"),
            "judge": value(overall, "judge_accuracy")}


def mean_std(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(results: dict[str, list[dict]], seeds: list[int], minutes: float, steps: int) -> str:
    """Markdown: one row per method, mean ± std over seeds."""
    lines = ["| method | " + " | ".join(label for _, label in COLUMNS) + " | seeds |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for method, per_seed in results.items():
        cells = [mean_std([r[key] for r in per_seed]) for key, _ in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {len(per_seed)} |")
    lines += ["", f"Held-out split of the built-in prompts (49 rows: arith 20, explain 15, "
                  f"story 14), greedy; {steps} GRPO steps from a shared warm-up per seed; "
                  f"seeds {', '.join(map(str, seeds))}; mean ± std over seeds; "
                  f"the GRPO/SFT runs took {minutes:.0f} min of wall time in all (2 CPU "
                  "cores; evaluation and warm-ups not counted)."]
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label in COLUMNS
            if any(r[k] is not None for rs in results.values() for r in rs)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5))
    for ax, (key, label) in zip(axes if len(keys) > 1 else [axes], keys):
        names = list(results)
        vals = [[r[key] for r in results[m] if r[key] is not None] for m in names]
        means = [statistics.fmean(v) if v else 0.0 for v in vals]
        errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
        ax.bar(range(len(names)), means, yerr=errs, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_readme(readme: Path, text: str) -> None:
    """Replace the block between the ablation markers."""
    body = readme.read_text()
    if README_BEGIN not in body or README_END not in body:
        raise SystemExit(f"error: {readme}: markers {README_BEGIN} / {README_END} not found")
    head, rest = body.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{text}\n{README_END}{tail}")


def run_all(out: Path, args, judge: list[str]) -> dict[str, list[tuple[int, dict]]]:
    """Train and evaluate every (seed, method) not done yet; {row: [(seed, utility)]}."""
    results: dict[str, list] = {"warm-up (start)": []}
    results.update({m: [] for m in args.methods})
    for seed in args.seeds:  # the starts first: every method needs them
        start = train_start(out, seed)
        results["warm-up (start)"].append(
            (seed, evaluate(start, out / START / f"eval_seed_{seed}", judge,
                            start_generation())))
    for method in args.methods:  # method by method: each row gets all its seeds in turn
        for seed in args.seeds:
            run = train_method(out, method, seed, args.steps, out / START / f"seed_{seed}"
                               / "hf_warmup")
            results[method].append((seed, evaluate(run, run / "eval", judge)))
            print(f"{method} seed {seed}: {results[method][-1][1]}", flush=True)
    return results


def collected(out: Path, args) -> dict[str, list[tuple[int, dict]]]:
    """The evaluations already on disk (an interrupted or partial ablation)."""
    found = {"warm-up (start)": [(s, out / START / f"eval_seed_{s}") for s in args.seeds]}
    found.update({m: [(s, out / m / f"seed_{s}" / "eval") for s in args.seeds]
                  for m in args.methods})
    return {row: [(s, utility(json.loads((d / "summary.json").read_text())))
                  for s, d in pairs if (d / "summary.json").is_file()]
            for row, pairs in found.items()}


def _seconds(path: Path) -> float:
    """A run's wall_seconds; 0 when the file is missing or not a number."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--judge-url", default=None)
    parser.add_argument("--judge-model", default=None)
    parser.add_argument("--readme", type=Path, default=None,
                        help="write the table between the ablation markers of this file")
    parser.add_argument("--report-only", action="store_true",
                        help="tabulate the runs already evaluated; train nothing")
    args = parser.parse_args()
    judge = (["--judge-url", args.judge_url, "--judge-model", args.judge_model]
             if args.judge_url else [])
    out = args.out.resolve()
    results = collected(out, args) if args.report_only else run_all(out, args, judge)
    seeds = sorted({s for rs in results.values() for s, _ in rs})
    minutes = sum(_seconds(out / m / f"seed_{s}" / "wall_seconds") for m in args.methods
                  for s in args.seeds) / 60
    results = {m: [r for _, r in rs] for m, rs in results.items() if rs}
    text = table(results, seeds, minutes, args.steps)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "ablation.png")
    print(text)
    if args.readme:
        figure = args.readme.parent / "docs" / "ablation.png"  # runs/ is not in git
        plot(results, figure)
        write_readme(args.readme, text + "\n\n![held-out utility per method](docs/ablation.png)")


if __name__ == "__main__":
    main()
