"""Suite-wide collection order, for parallel runs (pytest-xdist, `--dist loadfile`).

The README's test command runs the suite on two workers (`-n 2`; pyproject.toml adds
`--dist loadfile --no-loadscope-reorder`): each test file goes to one worker as a whole,
so module-scoped fixtures (a trained run, a SLURM job, a converted checkpoint) are
built once, as in a serial run; a session fixture used by two files (`tiny_run`, in
tests/integration/conftest.py) may be built once per worker. Most of the suite's time
is a few long integration files that each keep about one core busy (imports, a vLLM
engine starting, a SLURM job), so they are handed out first (LONG_FIRST): neither worker
is left with a long file at the end while the other idles.

(`--dist loadgroup` would group by fixture instead, but pytest-xdist 3.8 cannot tag
pytest 9.2's node ids with a group, so it silently degrades to `load`.)

Without xdist (`pytest -q`) only the order changes; no test depends on it.
"""

from __future__ import annotations

import pytest

LONG_FIRST = (
    "tests/integration/test_kill_resume.py",
    "tests/slurm/",
    "tests/integration/test_train_tiny.py",
    "tests/integration/test_train_baselines.py",
    "tests/integration/test_eval.py",
    "tests/distributed/",
    "tests/integration/",
)
"""Path prefixes in the order their files are handed out (the rest follow)."""


def _rank(item: pytest.Item) -> int:
    for i, prefix in enumerate(LONG_FIRST):
        if item.nodeid.startswith(prefix):
            return i
    return len(LONG_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: the order inside a file is kept
