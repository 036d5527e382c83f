"""`maestro eval` flags -> JudgeConfig / GenerationConfig (shared by the single-benchmark
command and the benchmarks file, whose `judge:` section the --judge-* flags override)."""

from __future__ import annotations

from maestro_megatron.errors import UserError

JUDGE_FLAGS = {"api_key_env": "judge_api_key_env", "concurrency": "judge_concurrency",
               "timeout_s": "judge_timeout", "max_retries": "judge_retries",
               "max_tokens": "judge_max_tokens"}


def judge_config(args, defaults: dict | None = None):
    """JudgeConfig from --judge-* flags over `defaults` (a benchmarks file's `judge:`)."""
    from maestro_megatron.eval.judge import JudgeConfig

    values = {k: v for k, v in (defaults or {}).items() if k in JudgeConfig.__dataclass_fields__}
    if args.judge_url:
        values["url"] = args.judge_url
    if args.judge_model:
        values["model"] = args.judge_model
    for field, flag in JUDGE_FLAGS.items():
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
    if not values.get("url") and not values.get("model"):
        return None
    if not values.get("url") or not values.get("model"):
        raise UserError("the judge needs both --judge-url and --judge-model")
    return JudgeConfig(**values)


def generation_config(args):
    from maestro_megatron.eval.generate import GenerationConfig

    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if args.samples == 1 else 1.0
    return GenerationConfig(samples=args.samples, temperature=temperature,
                            max_new_tokens=args.max_new_tokens,
                            max_model_len=args.max_model_len, seed=args.seed)
