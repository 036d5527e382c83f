"""`maestro train ARGS` with the policy forward before the update forced on every step
(tests/integration/test_on_policy_update.py compares it with the default, which skips
that forward when the update is on-policy).

    python -m tests.support.forced_policy_forward RECIPE [KEY=VALUE ...]
"""

from __future__ import annotations

import sys

import maestro_megatron.trainer.loop as loop
from maestro_megatron.cli import main

if __name__ == "__main__":
    loop.policy_forward_needed = lambda recipe: True
    raise SystemExit(main(["train", *sys.argv[1:]]))
