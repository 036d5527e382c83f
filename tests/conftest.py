"""Suite-wide collection order and grouping for parallel runs (pytest-xdist).

The README's test command runs the suite on two workers (`-n 2 --dist loadgroup`).
Most of the suite's time is spent in a few long integration runs that each keep about
one core busy (imports, a vLLM engine starting, a SLURM job), so two workers on a
2-core machine finish it in roughly two thirds of the serial time.

Two rules keep that correct and balanced:
- every test that uses a module- or session-scoped fixture of this suite (a trained
  run, a SLURM job, a converted checkpoint) is put in one xdist group per fixture, so
  the fixture is built once, on one worker, as it is in a serial run;
- the long modules are collected first (LONG_FIRST), so neither worker is left with
  a long module at the end while the other idles.

Without xdist (`pytest` alone, `-n 0`) the grouping marks are inert and only the order
changes; each test stays independent of the order.
"""

from __future__ import annotations

import pytest

LONG_FIRST = (
    "tests/integration/test_kill_resume.py",
    "tests/slurm/",
    "tests/integration/test_train_tiny.py",
    "tests/integration/test_eval.py",
    "tests/distributed/",
    "tests/integration/",
)
"""Path prefixes in the order their tests are handed out (the rest follow)."""


def _shared_fixtures(item: pytest.Item) -> list[str]:
    """The module/session-scoped fixtures defined in this suite that the test uses
    (directly or through other fixtures), qualified by their module when module-scoped."""
    info = getattr(item, "_fixtureinfo", None)
    keys = []
    for name in info.names_closure if info is not None else ():
        for fixturedef in info.name2fixturedefs.get(name, ()):
            where = fixturedef.baseid  # "tests/integration", "tests/slurm/test_sbatch.py"
            if fixturedef.scope in ("session", "module") and where.startswith("tests"):
                keys.append(name if fixturedef.scope == "session" else f"{where}::{name}")
    return keys


def _rank(item: pytest.Item) -> int:
    path = item.nodeid
    for i, prefix in enumerate(LONG_FIRST):
        if path.startswith(prefix):
            return i
    return len(LONG_FIRST)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: the order inside a module is kept
    parent: dict[str, str] = {}  # union-find: tests sharing any fixture share a group

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    uses = [_shared_fixtures(item) for item in items]
    for keys in uses:
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
    for item, keys in zip(items, uses):
        if keys:
            item.add_marker(pytest.mark.xdist_group(root(keys[0])))
