"""What `maestro eval` was pointed at -> an HF directory (+ the run's recipe, if any).

Accepted, in this order:
- a run directory: ``recipe.yaml`` + ``hf_final/`` (the trained policy);
- an HF model directory: ``config.json`` + weights (+ tokenizer files);
- a Megatron ``torch_dist`` checkpoint (``metadata.json``; a run's
  ``checkpoints/step_N`` or ``checkpoints/latest``, or a converter output): exported
  to a temporary HF directory with the project's converter
  (`maestro_megatron.weights.convert.megatron_to_hf`), deleted when evaluation ends.
The recipe (chat template, answer and format patterns, max new tokens) is the run's
``recipe.yaml`` when there is one (a checkpoint's run is two levels up), else None and
the defaults apply.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from maestro_megatron.errors import UserError


@dataclass(frozen=True)
class ModelSource:
    """A resolved evaluation target."""

    hf_dir: Path
    """HF directory the engine loads (config, safetensors, tokenizer)."""
    recipe: object | None
    """The run's Recipe, or None."""
    name: str
    """Short label for tables and plots (the run directory's name)."""
    kind: str
    """"run", "hf" or "megatron"."""


def _load_run_recipe(run_dir: Path):
    from maestro_megatron.config import load_recipe

    path = run_dir / "recipe.yaml"
    return load_recipe(path) if path.is_file() else None


def _checkpoint_run(ckpt: Path) -> Path | None:
    """RUN for RUN/checkpoints/step_N (or latest), else None."""
    ckpt = ckpt.resolve()
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "recipe.yaml").is_file():
        return ckpt.parent.parent
    return None


def _latest(path: Path) -> Path:
    """checkpoints/latest may be a symlink or a file naming the step directory."""
    if path.is_file():
        target = path.parent / path.read_text().strip()
        if not target.is_dir():
            raise UserError(f"{path} names {target.name}, which does not exist")
        return target
    return path


def run_recipe(path: str | Path):
    """The recipe of the run `path` belongs to (run dir, its hf_final, one of its
    checkpoints), else None; cheap: nothing is exported."""
    path = Path(path)
    if not path.exists():
        return None
    path = _latest(path)
    for run in (path, path.parent if path.name == "hf_final" else None, _checkpoint_run(path)):
        if run is not None and (run / "recipe.yaml").is_file():
            return _load_run_recipe(run)
    return None


@contextlib.contextmanager
def resolve_source(path: str | Path) -> Iterator[ModelSource]:
    """Yield the ModelSource of `path` (UserError naming the path when it is none of the
    accepted kinds); a temporary export is removed on exit."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run, model directory or checkpoint")
    path = _latest(path)
    if (path / "recipe.yaml").is_file() and (path / "hf_final").is_dir():
        if not (path / "hf_final" / "config.json").is_file():
            raise UserError(f"{path / 'hf_final'}: no config.json (an unfinished export?)")
        yield ModelSource(path / "hf_final", _load_run_recipe(path), path.name, "run")
        return
    if (path / "config.json").is_file():
        run = path.parent if path.name == "hf_final" else None
        recipe = _load_run_recipe(run) if run is not None else None
        yield ModelSource(path, recipe, (run or path).name, "hf")
        return
    if (path / "metadata.json").is_file():
        yield from _exported(path)
        return
    if (path / "recipe.yaml").is_file():
        raise UserError(f"{path}: a run directory without hf_final/ (did the run finish?); "
                        "pass one of its checkpoints/step_N instead")
    raise UserError(f"{path}: not a run directory (recipe.yaml + hf_final/), an HF model "
                    "directory (config.json) or a megatron checkpoint (metadata.json)")


def _exported(ckpt: Path) -> Iterator[ModelSource]:
    from maestro_megatron.weights.convert import megatron_to_hf

    run = _checkpoint_run(ckpt)
    tmp = Path(tempfile.mkdtemp(prefix="maestro_eval_"))
    try:
        hf_dir = megatron_to_hf(ckpt, tmp / "hf", progress=False)
        recipe = _load_run_recipe(run) if run is not None else None
        yield ModelSource(hf_dir, recipe, (run or ckpt).name, "megatron")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
