"""The run directory: resolved recipe, metrics (JSONL + TensorBoard), Conductor weights.

    run_dir/
      recipe.yaml               the resolved recipe (written atomically)
      metrics.jsonl             one {"step", "time", **metrics} object per step
      conductor_weights.jsonl   one {"step", "time", "components", "weights"} per log
      rollouts.jsonl            with run.log_rollouts: one object per response per step
      tb/                       TensorBoard scalars under their namespaced names

Only the logging rank writes (``enabled=True``); elsewhere every method is a no-op.
Lines are flushed per step, so a killed run keeps every completed step. On resume
(``start_step > 0``) lines of steps after ``start_step`` (written after the checkpoint
the run resumes from) are dropped, and TensorBoard purges them too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from maestro_megatron.errors import RunDirError

METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "conductor_weights.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
RECIPE_FILE = "recipe.yaml"
TB_DIR = "tb"
PROGRESS_KEYS = ("reward/scalar", "train/loss", "train/kl", "conductor/entropy")
"""Metrics shown in the progress bar's postfix, when present."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _to_float(value: Any) -> float:
    """Python number or 0-d tensor/array -> float."""
    return float(value.item()) if hasattr(value, "item") else float(value)


class RunWriter:
    """Writes one run directory; see the module docstring for the layout.

    run_dir: the run directory; recipe_dict: the resolved recipe (plain data);
    enabled: True on the logging rank only; total_steps: for the progress bar's ETA;
    start_step: steps already done (resume); progress: show a tqdm bar; overwrite: a fresh
    start (start_step 0) removes an earlier run's records instead of refusing
    (`check_fresh_start`).
    """

    def __init__(self, run_dir: Path, recipe_dict: dict, *, enabled: bool, total_steps: int,
                 start_step: int = 0, progress: bool = True, overwrite: bool = False):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._metrics = self._weights = self._tb = self._bar = self._rollouts = None
        if not enabled:
            return
        if start_step == 0:
            self.check_fresh_start(self.run_dir, overwrite=overwrite)
            for name in (METRICS_FILE, WEIGHTS_FILE, ROLLOUTS_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / TB_DIR, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / RECIPE_FILE,
                          yaml.safe_dump(recipe_dict, sort_keys=False))
        if start_step > 0:
            for name in (METRICS_FILE, WEIGHTS_FILE, ROLLOUTS_FILE):
                _truncate_after(self.run_dir / name, start_step)
        self._metrics = open(self.run_dir / METRICS_FILE, "a")
        self._weights = open(self.run_dir / WEIGHTS_FILE, "a")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.run_dir / TB_DIR),
                                 purge_step=start_step + 1 if start_step > 0 else None)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                             dynamic_ncols=True)

    @staticmethod
    def check_fresh_start(run_dir: Path, *, overwrite: bool) -> None:
        """A run that starts afresh (nothing to resume) must not append to an earlier
        run's records: RunDirError naming the file unless `overwrite` (then the writer
        removes them). Reads only; call it on every rank before expensive work."""
        if overwrite:
            return
        for name in (METRICS_FILE, WEIGHTS_FILE):
            path = Path(run_dir) / name
            if not path.is_file():
                continue
            with open(path) as f:
                earlier = any(line.strip() for line in f)
            if earlier:
                raise RunDirError(f"{path} holds records of an earlier run and there is no "
                                  "checkpoint to resume from; set run.overwrite=true to "
                                  "start afresh (removes them) or choose another "
                                  "run.output_dir")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one step: metrics are {namespaced name: number} (0-d tensors are fine)."""
        if not self.enabled:
            return
        values = {k: _to_float(v) for k, v in metrics.items()}
        _write_line(self._metrics, {"step": step, "time": time.time(), **values})
        for key, value in values.items():
            self._tb.add_scalar(key, value, global_step=step)
        self._tb.flush()
        if self._bar is not None:
            self._bar.update(max(step - self._bar.n, 0))
            shown = {k.split("/")[-1]: f"{values[k]:.4g}" for k in PROGRESS_KEYS if k in values}
            self._bar.set_postfix(shown, refresh=True)

    def log_conductor_weights(self, step: int, weights: dict[str, list[float]],
                              components: list[str]) -> None:
        """weights: {task category: [w_1..w_K]} = the deterministic w(h) averaged over
        the category's responses; components: the K reward names, in order."""
        if not self.enabled:
            return
        for task, w in weights.items():
            if len(w) != len(components):
                raise ValueError(f"task {task!r}: {len(w)} weights for {len(components)} "
                                 f"components {components}")
        record = {"step": step, "time": time.time(), "components": list(components),
                  "weights": {t: [_to_float(x) for x in w] for t, w in weights.items()}}
        _write_line(self._weights, record)
        for task, w in record["weights"].items():
            for name, value in zip(components, w):
                self._tb.add_scalar(f"conductor_weight/{task}/{name}", value, global_step=step)

    def log_rollouts(self, step: int, records: list[dict]) -> None:
        """Append one {"step", **record} line per response (run.log_rollouts)."""
        if not self.enabled:
            return
        if self._rollouts is None:
            self._rollouts = open(self.run_dir / ROLLOUTS_FILE, "a")
        self._rollouts.write("".join(json.dumps({"step": step, **r}) + "\n" for r in records))
        self._rollouts.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        for handle in (self._metrics, self._weights, self._tb, self._bar, self._rollouts):
            if handle is not None:
                handle.close()
        self._metrics = self._weights = self._tb = self._bar = self._rollouts = None
        self.enabled = False

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_line(handle, record: dict) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def _read_jsonl(path: Path, what: str) -> list[dict]:
    """Records of a JSONL file; a torn last line (killed mid-write) is skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} (is this a run directory written by "
                                f"RunWriter?)")
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
    return records


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the records of steps <= `step` (resume after a crash)."""
    if not path.is_file():
        return
    kept = [r for r in _read_jsonl(path, "records") if r["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-step metric records of a run, in order."""
    return _read_jsonl(Path(run_dir) / METRICS_FILE, "metrics")


def read_rollouts(run_dir: Path) -> list[dict]:
    """The per-response records of a run with run.log_rollouts (see `rollout_records`)."""
    return _read_jsonl(Path(run_dir) / ROLLOUTS_FILE, "rollout records")


def read_conductor_weights(run_dir: Path) -> list[dict]:
    """The Conductor weight records {"step", "time", "components", "weights"}."""
    return _read_jsonl(Path(run_dir) / WEIGHTS_FILE, "Conductor weight history")


