"""Synthetic contextual-bandit demo of the Conductor: python tools/bandit_demo.py [--seed N]."""

from maestro_megatron.cli import main

if __name__ == "__main__":
    import sys

    raise SystemExit(main(["bandit", *sys.argv[1:]]))
