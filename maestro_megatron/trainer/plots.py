"""Figures of a run directory (matplotlib, Agg backend: no display needed).

- `plot_conductor_weights`: the paper's figure of weight evolution. One panel per task
  category, x = policy step, one line per reward component: the Conductor's
  deterministic weight w_k(h) = sum_a pi(a | h) w_k(a), averaged over the category's
  responses (the records `RunWriter.log_conductor_weights` wrote).
- `plot_rewards`: the mean scalar reward (``reward/scalar``) and the per-component
  rewards (``reward/<name>``) over steps, from metrics.jsonl.
"""

from __future__ import annotations

import math
from pathlib import Path

from maestro_megatron.trainer.outputs import read_conductor_weights, read_metrics

WEIGHTS_PNG = "conductor_weights.png"
REWARDS_PNG = "rewards.png"
MAX_COLS = 3


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")


def _grid(num_panels: int) -> tuple[int, int]:
    cols = min(num_panels, MAX_COLS)
    return math.ceil(num_panels / cols), cols


def conductor_weights_figure(records: list[dict]):
    """records: {"step", "components": [K names], "weights": {task: [K floats]}} ->
    a Figure with one Axes per task category (extra grid cells removed)."""
    if not records:
        raise ValueError("no Conductor weight records to plot")
    tasks: list[str] = []
    for record in records:
        tasks += [t for t in record["weights"] if t not in tasks]
    components = records[-1]["components"]
    plt = _pyplot()
    rows, cols = _grid(len(tasks))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False,
                             sharey=True)
    flat = axes.flatten()
    for ax, task in zip(flat, tasks):
        points = [(r["step"], r["weights"][task]) for r in records if task in r["weights"]]
        steps = [s for s, _ in points]
        for k, name in enumerate(components):
            ax.plot(steps, [w[k] for _, w in points], label=name, linewidth=1.5)
        ax.set_title(task)
        _integer_steps(ax)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    for ax in flat[len(tasks):]:
        fig.delaxes(ax)
    flat[0].set_ylabel("weight $w_k(h)$")
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(components), frameon=False)
    fig.suptitle("Conductor reward weights by task category")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def rewards_figure(records: list[dict]):
    """records: metrics.jsonl rows -> a Figure with two Axes: ``reward/scalar`` and the
    other ``reward/<name>`` series (each plotted over the steps where it was logged)."""
    keys = sorted({k for r in records for k in r if k.startswith("reward/")})
    if not keys:
        raise ValueError("no reward/* metrics to plot")
    plt = _pyplot()
    fig, (ax_scalar, ax_parts) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, names in ((ax_scalar, [k for k in keys if k == "reward/scalar"]),
                      (ax_parts, [k for k in keys if k != "reward/scalar"])):
        for key in names:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot([s for s, _ in points], [v for _, v in points],
                    label=key.split("/", 1)[1], linewidth=1.5)
        _integer_steps(ax)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(frameon=False, fontsize="small")
    ax_scalar.set_title("mean scalar reward")
    ax_parts.set_title("mean reward per component")
    fig.tight_layout()
    return fig


def _save(fig, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    _pyplot().close(fig)
    return out_png


def plot_conductor_weights(run_dir: Path, out_png: Path | None = None) -> Path:
    """conductor_weights.jsonl -> PNG (default ``run_dir/conductor_weights.png``).

    Raises FileNotFoundError when the history is missing, ValueError when it is empty.
    """
    run_dir = Path(run_dir)
    records = read_conductor_weights(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: conductor_weights.jsonl has no records yet")
    return _save(conductor_weights_figure(records), out_png or run_dir / WEIGHTS_PNG)


def plot_rewards(run_dir: Path, out_png: Path | None = None) -> Path:
    """metrics.jsonl -> PNG (default ``run_dir/rewards.png``).

    Raises FileNotFoundError when metrics.jsonl is missing, ValueError when it holds no
    reward/* metrics.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: metrics.jsonl has no records yet")
    try:
        fig = rewards_figure(records)
    except ValueError as err:
        raise ValueError(f"{run_dir}: {err}") from None
    return _save(fig, out_png or run_dir / REWARDS_PNG)
