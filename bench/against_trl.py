"""Our trainer against TRL's GRPOTrainer on the same tiny GRPO configuration.

    bash bench/setup_trl.sh                      # once: TRL in bench/.venv-trl only
    .venv/bin/python -m bench.against_trl [--steps 12] [--order ABBA]

Both train the warmed tiny policy (4 layers, hidden 128, vocabulary 512) on the
built-in train prompts as plain text (`prompt + "\\n"`): N=8 prompts x G=4 responses
of at most 48 tokens per step, ONE optimizer step per rollout batch (all 32 rows),
lr 1e-4, KL beta 0.05 (a loss term) against the frozen reference, eps 0.2 / 0.28,
32 rows per forward / backward pass, and the same two
rewards at equal weights (fmt and len, our components' own code in both). The figure
is seconds per step, median over steps 3..N of every run of a trainer.

The runs alternate as whole processes in the order given (default A B B A: ours, TRL,
TRL, ours), so a drift of the machine's speed falls on both. What each includes: ours:
vLLM rollout (engine in its own processes), the policy and reference forwards, rewards,
the update, refit of the engine, logging; TRL: generation with transformers `generate`
in the training process, its reference forward, rewards, the update, logging. Our full
MAESTRO step (5 rewards with the r_ppl proxy forward, the Conductor) is
bench/step_anatomy.py. Without bench/.venv-trl the TRL half is reported as not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, WORK, base_model, median, quiet_machine, record, table
from bench.driver import STEP_KEY, bench_recipe, open_run, run_steps

TRL_PYTHON = Path(__file__).resolve().parent / ".venv-trl" / "bin" / "python"
SAME_CONFIG = ["rewards.components=[fmt,len]", "scalarizer.name=equal",
               "grpo.num_minibatches=1", "grpo.kl_in_loss=true", "grpo.micro_batch_size=32",
               "data.prompt_format=plain"]
"""Our side of the shared configuration (the rest is the tiny recipe: N, G, lengths,
lr, beta, eps); bench/trl_grpo.py sets the same values on TRL's side. TRL's beta is a
KL term in the loss (our grpo.kl_in_loss) and its 32 rows go through the model in one
pass (per_device_train_batch_size 32: our micro-batch)."""
FIRST_COUNTED = 3
STAGES = ["rollout", "forward", "forward/policy", "forward/reference", "rewards", "train",
          "refit"]


def ours(steps: int) -> dict:
    """Per-step seconds (and stage seconds) of our trainer on the shared configuration."""
    with open_run(bench_recipe("against_trl_ours", SAME_CONFIG)) as state:
        rows = run_steps(state, 1, steps)
    return {"step_s": [r[STEP_KEY] for r in rows],
            "stages_s": {s: [r.get(f"timing/{s}", 0.0) for r in rows] for s in STAGES}}


def ours_in_child(steps: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        subprocess.run([sys.executable, "-m", "bench.against_trl", "--steps", str(steps),
                        "--ours-only", tmp.name], check=True, cwd=REPO)
        return json.loads(Path(tmp.name).read_text())


def trl(steps: int) -> dict:
    if not TRL_PYTHON.is_file():
        return {"error": f"{TRL_PYTHON} missing: run bash bench/setup_trl.sh"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([str(TRL_PYTHON), str(REPO / "bench" / "trl_grpo.py"),
                               "--model", str(base_model()), "--steps", str(steps),
                               "--out", out.name, "--workdir", str(WORK / "trl")],
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            return {"error": f"TRL run failed: {proc.stderr.strip().splitlines()[-1:]}",
                    "stderr_tail": proc.stderr[-3000:]}
        return json.loads(Path(out.name).read_text())


def counted(runs: list[list[float]]) -> list[float]:
    """Steps FIRST_COUNTED.. of every run, pooled (start-up steps dropped)."""
    return [s for run in runs for s in run[FIRST_COUNTED - 1:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12, help="steps per run of each trainer")
    p.add_argument("--order", default="ABBA", help="runs in order, A = ours, B = TRL")
    p.add_argument("--ours-only", type=Path, help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    if args.ours_only:
        args.ours_only.write_text(json.dumps(ours(args.steps)))
        return 0
    load = quiet_machine()
    runs: dict[str, list] = {"A": [], "B": []}
    for which in args.order:
        res = ours_in_child(args.steps) if which == "A" else trl(args.steps)
        if "error" in res:
            print(f"TRL not run: {res['error']}\n{res.get('stderr_tail', '')}")
            break
        runs[which].append(res)
    our_steps = counted([r["step_s"] for r in runs["A"]])
    res = {"ours_step_s": [r["step_s"] for r in runs["A"]],
           "ours_median_s": median(our_steps),
           "ours_stage_median_s": {s: median(counted([r["stages_s"][s] for r in runs["A"]]))
                                   for s in STAGES}}
    rows = [["ours (megatron-core + vLLM)", len(our_steps), res["ours_median_s"], 1.0]]
    if runs["B"]:
        trl_steps = counted([r["step_s"] for r in runs["B"]])
        res.update(trl_step_s=[r["step_s"] for r in runs["B"]], trl_version=runs["B"][0]["trl"],
                   trl_median_s=median(trl_steps))
        res["ours_over_trl"] = res["ours_median_s"] / res["trl_median_s"]
        rows.append([f"TRL {res['trl_version']} GRPOTrainer", len(trl_steps),
                     res["trl_median_s"], res["trl_median_s"] / res["ours_median_s"]])
    print(table(["trainer", "steps counted", "median s per step", "x ours"], rows))
    print(table(["our stage", "median s"], [[s, v] for s, v in
                                            res["ours_stage_median_s"].items()]))
    if "ours_over_trl" in res:
        print(f"ours / TRL: {res['ours_over_trl']:.2f} (target <= 1)")
    record("against_trl", {"steps": args.steps, "order": args.order,
                           "first_counted_step": FIRST_COUNTED, "overrides": SAME_CONFIG},
           res, load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
