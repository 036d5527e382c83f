"""The `maestro` command line."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from maestro_megatron.errors import UserError
from maestro_megatron.logs import configure_quiet, quiet_spawned_process

# vLLM's CPU engine processes are spawned, and each imports this module (the parent's
# main) before vllm: the place to filter vLLM's import-time messages there.
quiet_spawned_process()


def _cmd_bandit(args) -> int:
    from maestro_megatron.demos.bandit import BanditSetup, format_report, run_bandit

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")

    result = run_bandit(BanditSetup(seed=args.seed, num_steps=args.steps))
    print(format_report(result))
    return 0


def _load_recipe(args):
    """The recipe of `args.recipe` + `args.overrides` (ConfigError: a UserError)."""
    from maestro_megatron.config import load_recipe

    if not os.path.isfile(args.recipe):
        raise UserError(f"recipe file {args.recipe} not found")
    return load_recipe(args.recipe, args.overrides)


def _cmd_check_recipe(args) -> int:
    from maestro_megatron.config import recipe_to_dict

    recipe = _load_recipe(args)
    if args.get is not None:  # one resolved value, for job scripts
        value = recipe
        for part in args.get.split("."):
            if not hasattr(value, part):
                raise UserError(f"--get {args.get}: no such recipe key")
            value = getattr(value, part)
        print(value)
        return 0
    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
    return 0


def _cmd_train(args) -> int:
    recipe = _load_recipe(args)
    from maestro_megatron.trainer.preflight import check_run_inputs

    check_run_inputs(recipe)  # paths, data, models: before any expensive work
    quiet = configure_quiet(recipe.run.verbose)  # before megatron and vLLM are imported
    from maestro_megatron.plan.build import train_gate

    verdict = train_gate(recipe)  # UserError before any model when it cannot fit (GPU)
    if os.environ.get("RANK", "0") == "0":
        print(f"maestro train: {args.recipe}, {recipe.run.num_steps} steps -> "
              f"{recipe.run.output_dir}" + (" (run.verbose=true shows all library output)"
                                            if quiet else ""), flush=True)
        if verdict is not None:
            print(verdict, flush=True)
    from maestro_megatron.trainer.loop import train

    train(recipe)  # the logging rank prints the summary
    return 0


def _plan_flags(parser: argparse.ArgumentParser, given: argparse.Namespace | None = None):
    """`maestro plan`'s flags (defaults: the values already parsed in `given`)."""
    value = vars(given) if given is not None else {}
    parser.add_argument("--nodes", type=int, default=value.get("nodes", 1))
    parser.add_argument("--gpus-per-node", type=int, default=value.get("gpus_per_node", 8))
    parser.add_argument("--gpu-memory", type=float, default=value.get("gpu_memory", 80.0),
                        metavar="GB", help="memory per GPU in GB (10^9 bytes; default 80)")
    parser.add_argument("--json", action="store_true", default=value.get("json", False),
                        help="print the plan as JSON (bytes per item, phase and GPU role)")
    parser.add_argument("--step-seconds", type=float, default=value.get("step_seconds"),
                        metavar="S", help="one step's seconds (a run's timing/step) for the "
                        "stop lead time (default: 600, assumed)")
    parser.add_argument("--stop-lead", action="store_true",
                        default=value.get("stop_lead", False),
                        help="print only the stop lead time in seconds (for sbatch --signal)")


def _stop_lead(plan, recipe, args):
    from maestro_megatron.plan.memory import dtype_bytes
    from maestro_megatron.plan.stop_lead import ASSUMED_STEP_S, stop_lead

    if args.step_seconds is not None and args.step_seconds < 0:
        raise UserError(f"--step-seconds must be >= 0, got {args.step_seconds}")
    return stop_lead(plan.model_parameters, dtype_bytes(recipe.precision.dtype),
                     nodes=args.nodes, ranks=args.nodes * args.gpus_per_node,
                     step_s=ASSUMED_STEP_S if args.step_seconds is None else args.step_seconds)


def _cmd_plan(args) -> int:
    import dataclasses
    import json

    from maestro_megatron.plan import format_plan, plan_recipe, plan_to_dict
    from maestro_megatron.plan.report import failure_message
    from maestro_megatron.plan.stop_lead import format_stop_lead

    rest = argparse.ArgumentParser(prog="maestro plan RECIPE", add_help=False)
    _plan_flags(rest, args)  # flags may also follow the recipe, among the overrides
    rest.add_argument("overrides", nargs="*")
    args = argparse.Namespace(**{**vars(args), **vars(rest.parse_intermixed_args(args.overrides))})
    recipe = _load_recipe(args)
    if min(args.nodes, args.gpus_per_node) < 1:
        raise UserError(f"--nodes and --gpus-per-node must be >= 1, got {args.nodes} and "
                        f"{args.gpus_per_node}")
    plan = plan_recipe(recipe, args.nodes, args.gpus_per_node, args.gpu_memory)
    lead = _stop_lead(plan, recipe, args)
    if args.stop_lead:
        print(lead.seconds, flush=True)
    elif args.json:
        print(json.dumps({**plan_to_dict(plan), "stop_lead": {
            **dataclasses.asdict(lead), "seconds": lead.seconds}}, indent=1), flush=True)
    else:
        *table, verdict_line = format_plan(plan, args.recipe).splitlines()
        print("\n".join([*table, format_stop_lead(lead, args.step_seconds is not None),
                         verdict_line]), flush=True)
    if not plan.fits:
        raise UserError(f"{args.recipe}: {failure_message(plan)}")
    return 0


def _cmd_explain(args) -> int:
    from maestro_megatron.data.prompts import load_sft_rows
    from maestro_megatron.trainer.explain import explain, format_weights

    if args.pairs is not None:
        pairs = load_sft_rows(args.pairs)
    else:
        from maestro_megatron.data.prompts import load_builtin_rows

        pairs, seen = [], {}
        for row in load_builtin_rows():  # the first 3 built-in examples of each task
            if seen.setdefault(row["task"], 0) < 3:
                seen[row["task"]] += 1
                pairs.append(row)
    components, weights, _ = explain(args.run_dir, pairs)
    print(format_weights(pairs, components, weights))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maestro", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error (also MAESTRO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run a MAESTRO recipe (under torchrun/srun for TP/PP/DP)")
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny_cpu.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("explain", help="the Conductor's weights for prompt+response pairs")
    p.add_argument("run_dir", help="a finished run directory (runs/tiny_cpu)")
    p.add_argument("--pairs", default=None,
                   help="JSONL with prompt/response[/task] rows (default: built-in examples)")
    p.set_defaults(func=_cmd_explain)
    p = sub.add_parser("bandit", help="train a Conductor on the synthetic contextual bandit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=150)
    p.set_defaults(func=_cmd_bandit)
    from maestro_megatron.data.build import add_data_parser
    from maestro_megatron.eval.cli import add_eval_parser
    from maestro_megatron.weights.cli import add_convert_parser

    add_eval_parser(sub)
    add_convert_parser(sub)
    add_data_parser(sub)
    p = sub.add_parser("check-recipe", help="load, validate and print a resolved recipe")
    p.add_argument("recipe")
    p.add_argument("--get", default=None, metavar="KEY",
                   help="print only this dotted key's resolved value (e.g. run.output_dir)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=_cmd_check_recipe)
    p = sub.add_parser("plan", help="GPU memory per phase of a recipe, and whether it fits")
    p.add_argument("recipe")
    _plan_flags(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="key.sub=value overrides")
    p.set_defaults(func=_cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A user error (recipe, data, paths, models, checkpoints,
    arguments) prints one line `error: ...` and returns 2; `--debug` (or
    MAESTRO_DEBUG=1) lets its traceback through. Anything else is a bug and raises."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug or os.environ.get("MAESTRO_DEBUG") == "1":
            raise
        print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)  # one line
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
