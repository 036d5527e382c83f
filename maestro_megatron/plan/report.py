"""`maestro plan`'s text: the per-phase table, the verdict line, and a JSON form."""

from __future__ import annotations

from dataclasses import asdict

from maestro_megatron.plan.memory import GB, ITEMS, Plan, RoleMemory
from maestro_megatron.plan.roles import role_label, varying_attributes

_SPECS = {"transformer_engine": "Transformer Engine spec (flash attention: no s^2 term)",
          "local": "local spec (full [b*heads, s, s] attention scores)"}


def gb(num_bytes: float, digits: int = 1) -> str:
    return f"{num_bytes / GB:.{digits}f}"


def _labeller(plan: Plan):
    roles = [r.role for rows in plan.phases.values() for r in rows]
    varying = varying_attributes(roles)
    tp_leader = plan.reward_model is not None and any(
        not r.reward_model and r.pp_rank == plan.layout.pp - 1 for r in roles)
    return lambda role: role_label(role, plan.layout, varying, tp_leader)


def _where(plan: Plan, phase: str, row: RoleMemory) -> str:
    return f"{phase} phase, {_labeller(plan)(row.role)}"


def verdict(plan: Plan) -> str:
    """`plan: fits: peak ...` or the failure (see `failure_message`)."""
    phase, row = plan.peak
    if not plan.fits:
        return "plan: " + failure_message(plan)
    return (f"plan: fits: peak {gb(row.total)} GB of {gb(plan.gpu_memory)} GB per GPU "
            f"({_where(plan, phase, row)})")


def failure_message(plan: Plan) -> str:
    """One line: why it does not fit, where, and the largest item there."""
    phase, row = plan.peak
    eng = plan.engine
    if row.total > plan.gpu_memory:
        item, size = row.largest
        return (f"does not fit: peak {gb(row.total)} GB of {gb(plan.gpu_memory)} GB per GPU "
                f"({_where(plan, phase, row)}); largest item: {ITEMS[item]} {gb(size)} GB")
    if eng is not None and eng.max_length_sequences < 1:
        return (f"does not fit: the rollout engine's KV cache ({gb(max(eng.kv_cache, 0))} GB "
                f"= budget {gb(eng.budget)} - weights {gb(eng.weights)} - runtime "
                f"{gb(eng.runtime)}) holds no {eng.seq_length}-token sequence (rollout phase); "
                f"largest item: rollout engine weights {gb(eng.weights)} GB")
    if eng is not None and not eng.startup_ok:
        engine_rows = [r for r in plan.phases["rollout"] if r.role.engines]
        worst = max(engine_rows, key=lambda r: r.total)
        item, size = max(((k, v) for k, v in worst.items.items() if k != "rollout_engine"),
                         key=lambda kv: kv[1])
        return (f"does not fit: vLLM's start-up check fails: {gb(eng.startup_free)} GB free "
                f"when the engine starts < rollout.gpu_memory_utilization x GPU memory = "
                f"{gb(eng.budget)} GB ({_where(plan, 'rollout', worst)}); largest item: "
                f"{ITEMS[item]} {gb(size)} GB")
    return "fits"


def _header(plan: Plan, name: str) -> list[str]:
    lay = plan.layout
    vpp = f" (VPP {lay.vpp})" if lay.vpp else ""
    nodes = f"{lay.nodes} node{'s' if lay.nodes > 1 else ''}"
    lines = [f"maestro plan: {name} on {nodes} x {lay.gpus_per_node} GPUs x "
             f"{gb(plan.gpu_memory)} GB; world {lay.world} = TP {lay.tp} x PP {lay.pp}{vpp} x "
             f"CP {lay.cp} x DP {lay.dp}",
             f"policy: {plan.model_parameters:,} parameters; per GPU: "
             + ", ".join(f"{n:,} (stage {p})" if lay.pp > 1 else f"{n:,}"
                         for p, n in sorted(plan.stage_parameters.items()))
             + f"; {_SPECS.get(plan.transformer_impl, plan.transformer_impl)}"]
    eng = plan.engine
    if eng is not None:
        check = "ok" if eng.startup_ok else "FAILS"
        lines.append(
            f"rollout engine: {eng.num_engines} x vLLM TP {eng.tensor_parallel}, budget "
            f"{gb(eng.budget)} GB = weights {gb(eng.weights)} + runtime {gb(eng.runtime)} + "
            f"KV cache {gb(max(eng.kv_cache, 0))} GB ({eng.kv_bytes_per_token:,} B/token: "
            f"{eng.kv_tokens:,} tokens = {eng.max_length_sequences} sequences of "
            f"{eng.seq_length}); start-up check: {gb(eng.startup_free)} GB free >= "
            f"{gb(eng.budget)} GB: {check}")
    rm = plan.reward_model
    if rm is not None:
        lines.append(f"reward model: {rm.num_parameters:,} parameters ({rm.source})")
    if plan.host_per_node:
        names = {"engine_weights": "engine weights (sleep level 1)",
                 "reference": "reference (offloaded)", "reward_model": "reward model (offloaded)",
                 "checkpoint_staging": "checkpoint staging (run.async_save)"}
        lines.append(f"host memory per node (average of {plan.layout.nodes}) for what leaves "
                     "the GPUs: " + " + ".join(
            f"{names[k]} {gb(v)} GB" for k, v in plan.host_per_node.items())
            + f" = {gb(sum(plan.host_per_node.values()))} GB")
    return lines


def format_plan(plan: Plan, name: str = "recipe") -> str:
    """The header, one column per phase (the worst GPU role of that phase), the worst
    roles, each role's total per phase, and the verdict."""
    phases = list(plan.phases)
    worst = {p: plan.worst(p) for p in phases}
    keys = [k for k in ITEMS if any(k in worst[p].items for p in phases)]
    width = max(len(ITEMS[k]) for k in keys) + 2
    lines = _header(plan, name) + [""]
    lines.append("GB per GPU".ljust(width) + "".join(f"{p:>10}" for p in phases))
    for key in keys:
        cells = [worst[p].items.get(key) for p in phases]
        lines.append(ITEMS[key].ljust(width)
                     + "".join(f"{gb(c, 2) if c else '-':>10}" for c in cells))
    lines.append("total".ljust(width) + "".join(f"{gb(worst[p].total, 2):>10}"
                                                for p in phases))
    label = _labeller(plan)
    roles = [r.role for r in plan.phases[phases[0]]]
    if len(roles) > 1:
        lines.append("worst GPU: " + "; ".join(f"{p}: {label(worst[p].role)}" for p in phases))
        totals = {p: {r.role: r.total for r in plan.phases[p]} for p in phases}
        width = max(len(label(r)) for r in roles) + 2
        lines += ["", "total GB by GPU role".ljust(width) + "".join(f"{p:>10}" for p in phases)
                  + "      GPUs"]
        for row in plan.phases[phases[0]]:
            lines.append(label(row.role).ljust(width)
                         + "".join(f"{gb(totals[p][row.role], 2):>10}" for p in phases)
                         + f"{row.num_gpus:>10}")
    lines += ["", verdict(plan)]
    return "\n".join(lines)


def plan_to_dict(plan: Plan) -> dict:
    """Everything in the plan as plain JSON-able values (bytes)."""
    label = _labeller(plan)
    phase, row = plan.peak
    eng = plan.engine
    return {
        "gpu_memory": plan.gpu_memory, "layout": asdict(plan.layout),
        "transformer_impl": plan.transformer_impl, "model_parameters": plan.model_parameters,
        "stage_parameters": {str(k): v for k, v in plan.stage_parameters.items()},
        "phases": {p: [{"role": asdict(r.role), "label": label(r.role), "num_gpus": r.num_gpus,
                        "items": r.items, "total": r.total} for r in rows]
                   for p, rows in plan.phases.items()},
        "engine": None if eng is None else {
            **asdict(eng), "kv_tokens": eng.kv_tokens,
            "max_length_sequences": eng.max_length_sequences, "startup_ok": eng.startup_ok},
        "reward_model": None if plan.reward_model is None else asdict(plan.reward_model),
        "assumptions": asdict(plan.assumptions), "host_per_node": plan.host_per_node,
        "peak": {"phase": phase, "label": label(row.role), "bytes": row.total},
        "fits": plan.fits, "verdict": verdict(plan),
    }
