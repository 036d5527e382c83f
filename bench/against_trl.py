"""Our trainer against TRL's GRPOTrainer on the same tiny GRPO configuration.

    bash bench/setup_trl.sh                      # once: TRL in bench/.venv-trl only
    .venv/bin/python -m bench.against_trl [--rollouts 4]

Both train the warmed tiny policy (4 layers, hidden 128, vocabulary 512) on the
built-in train prompts through its chat template: N=8 prompts x G=4 responses of at
most 48 tokens per rollout batch, 4 optimizer steps per batch, lr 1e-4, KL beta 0.05
against the frozen reference, and the same three rewards with equal weights (fmt, len,
pref = our MiniLM embedding scorer's code in both). The figure is seconds per rollout
batch (= one of our steps = 4 TRL optimizer steps), median after the first.

What each includes: ours: vLLM rollout (engine in its own processes), policy and
reference forwards, rewards, the update, refit of the engine, logging. TRL: generation
with transformers `generate` in the training process, its reference forward, rewards,
the 4 updates, logging. Our full MAESTRO step (5 rewards with the r_ppl proxy forward,
the Conductor) is bench/step_anatomy.py. Without bench/.venv-trl the TRL half is
reported as not run, and why.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, WORK, base_model, median, record, table
from bench.driver import STEP_KEY, bench_recipe, open_run, run_steps

TRL_PYTHON = Path(__file__).resolve().parent / ".venv-trl" / "bin" / "python"
SAME_CONFIG = ["rewards.components=[fmt,len,pref]", "scalarizer.name=equal"]


def ours(rollouts: int) -> list[float]:
    """Step seconds of our trainer on the shared configuration (first step dropped)."""
    with open_run(bench_recipe("against_trl_ours", SAME_CONFIG)) as state:
        rows = run_steps(state, 1, rollouts)
    return [r[STEP_KEY] for r in rows]


def trl(rollouts: int) -> dict:
    if not TRL_PYTHON.is_file():
        return {"error": f"{TRL_PYTHON} missing: run bash bench/setup_trl.sh"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([str(TRL_PYTHON), str(REPO / "bench" / "trl_grpo.py"),
                               "--model", str(base_model()), "--rollouts", str(rollouts),
                               "--out", out.name, "--workdir", str(WORK / "trl")],
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            return {"error": f"TRL run failed: {proc.stderr.strip().splitlines()[-1:]}",
                    "stderr_tail": proc.stderr[-3000:]}
        return json.loads(Path(out.name).read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=4, help="rollout batches per trainer")
    p.add_argument("--ours-only", type=Path, help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    if args.ours_only:
        args.ours_only.write_text(json.dumps(ours(args.rollouts)))
        return 0
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        subprocess.run([sys.executable, "-m", "bench.against_trl", "--rollouts",
                        str(args.rollouts), "--ours-only", tmp.name], check=True, cwd=REPO)
        our_steps = json.loads(Path(tmp.name).read_text())
    theirs = trl(args.rollouts)
    res = {"ours_step_s": our_steps, "ours_median_s": median(our_steps[1:])}
    rows = [["ours (megatron-core + vLLM)", len(our_steps), res["ours_median_s"], 1.0]]
    if "rollout_s" in theirs:
        res.update(trl_rollout_s=theirs["rollout_s"], trl_version=theirs["trl"],
                   trl_median_s=median(theirs["rollout_s"][1:]))
        res["ours_over_trl"] = res["ours_median_s"] / res["trl_median_s"]
        rows.append([f"TRL {theirs['trl']} GRPOTrainer", len(theirs["rollout_s"]),
                     res["trl_median_s"], res["trl_median_s"] / res["ours_median_s"]])
    else:
        res["trl_error"] = theirs["error"]
        print(f"TRL not run: {theirs['error']}\n{theirs.get('stderr_tail', '')}")
    print(table(["trainer", "rollout batches", "median s per batch", "x ours"], rows))
    if "ours_over_trl" in res:
        print(f"ours / TRL: {res['ours_over_trl']:.2f} (target <= 1)")
    record("against_trl", {"rollouts": args.rollouts, "overrides": SAME_CONFIG}, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
