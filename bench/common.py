"""What every bench script shares: the machine line, the results file, tables, medians,
peak memory of a process tree, and the warmed tiny model the step benchmarks start from.

Benchmarks are scripts, not tests: each prints a table and appends one JSON line to
`bench/results.jsonl` (or `$MAESTRO_BENCH_RESULTS`). A benchmark refuses to start on a
busy machine (1-minute load above MAX_LOAD, `quiet_machine`); with
MAESTRO_BENCH_ALLOW_LOAD=1 it runs anyway and its row says `"loaded": true`. The
figures that count are ratios measured side by side in one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("MAESTRO_BENCH_RESULTS", REPO / "bench" / "results.jsonl"))
WORK = Path(os.environ.get("MAESTRO_BENCH_DIR", "/tmp/maestro-bench"))
MAX_LOAD = 1.5
"""Highest 1-minute load average at a benchmark's start (2 cores: above it, other work
takes a core's worth of time and every stage stretches)."""
ALLOW_LOAD_ENV = "MAESTRO_BENCH_ALLOW_LOAD"
"""Scratch space: the warmed base model, run directories, converted checkpoints."""


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict:
    """Where and when: the figures mean nothing without it (load = other jobs' CPU use)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "commit": commit}


def quiet_machine(max_load: float = MAX_LOAD, wait_s: float = 240.0) -> float:
    """The 1-minute load average at the start; waits up to `wait_s` for it to fall to
    `max_load` (a benchmark just finished keeps the average up for a minute or two),
    then exits (status 3), unless MAESTRO_BENCH_ALLOW_LOAD=1 (the row is then marked
    loaded by `record`)."""
    deadline = time.monotonic() + wait_s
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    if load > max_load and os.environ.get(ALLOW_LOAD_ENV) != "1":
        print(f"error: the 1-minute load average is {load:.2f} (> {max_load}): other work "
              f"is running, and every figure would stretch with it. Wait for an idle "
              f"machine, or set {ALLOW_LOAD_ENV}=1 to run anyway (the row is marked "
              f"loaded).", file=sys.stderr)
        raise SystemExit(3)
    return load


def record(bench: str, config: dict, results: dict, load_at_start: float | None = None
           ) -> dict:
    """Append one JSON line {bench, machine, config, results} to the results file.
    load_at_start: `quiet_machine`'s reading (machine.loaded: above MAX_LOAD; the load
    at the end, machine.load_avg_1m, includes the benchmark's own processes)."""
    info = machine()
    if load_at_start is not None:
        info["load_avg_1m_start"] = round(load_at_start, 2)
        info["loaded"] = load_at_start > MAX_LOAD
    row = {"bench": bench, "machine": info, "config": config, "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    loads = f"load {info.get('load_avg_1m_start', '?')} -> {info['load_avg_1m']}"
    print(f"[{bench}] appended to {RESULTS} ({info['cpu']}, {info['cores']} cores, {loads}"
          f"{', LOADED' if info.get('loaded') else ''})")
    return row


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table; floats get 4 significant digits."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


class PeakRSS:
    """Peak resident memory (bytes) of this process and of its whole process tree (the
    vLLM engine lives in child processes), sampled every `interval` s on a thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.02):
        import psutil

        self.proc = psutil.Process(pid or os.getpid())
        self.interval, self.self_peak, self.tree_peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        try:
            own = self.proc.memory_info().rss
            tree = own
            for child in self.proc.children(recursive=True):
                try:
                    tree += child.memory_info().rss
                except psutil.Error:
                    pass  # a child that just exited
        except psutil.Error:
            return
        self.self_peak, self.tree_peak = max(self.self_peak, own), max(self.tree_peak, tree)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def base_model(kind: str = "warmup") -> Path:
    """The tiny recipe's policy after its warm-up (`hf_warmup`) or its random init
    (`hf_random_init`), built once under WORK/base-<recipe hash> by one real `maestro
    train` step and reused, so a benchmark's own run starts in seconds (model.hf_path)."""
    recipe = REPO / "recipes" / "tiny_cpu.yaml"
    # keyed by the recipe's text and its parent's: a changed warm-up or model rebuilds
    digest = hashlib.sha1(recipe.read_bytes() + (REPO / "recipes" / "base.yaml").read_bytes())
    base = WORK / f"base-{digest.hexdigest()[:10]}"
    out = base / f"hf_{kind}"
    if not (base / "FINISHED").is_file():
        print(f"building the warmed tiny base model in {base} (once, ~1-2 min)", flush=True)
        subprocess.run([sys.executable, "-m", "maestro_megatron.cli", "train",
                        str(recipe), "run.num_steps=1",
                        f"run.output_dir={base}", "run.overwrite=true", "run.progress=false"],
                       check=True, cwd=REPO)
    if not (out / "config.json").is_file():
        raise FileNotFoundError(f"{out}: not built (delete {base} and rerun)")
    return out
