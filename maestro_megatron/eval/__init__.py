"""`maestro eval`: benchmark generation, judge-free metrics, an LLM judge over any
OpenAI-compatible endpoint (cached), bootstrap intervals and run comparisons.

Python API (for tools such as tools/ablate.py):

    from maestro_megatron.eval import evaluate, JudgeConfig, GenerationConfig
    result = evaluate("runs/tiny_cpu", None, split="test",
                      judge=JudgeConfig(url="http://127.0.0.1:8000/v1", model="judge"),
                      pref=True)
    result.summary["tasks"]["arith"]["exact_match"]["value"]   # also OUT/summary.json

Heavy imports (vLLM, transformers) happen inside the calls.
"""

from maestro_megatron.eval.bootstrap import Interval, bootstrap_mean, paired_difference
from maestro_megatron.eval.compare import compare, format_comparison
from maestro_megatron.eval.generate import GenerationConfig
from maestro_megatron.eval.judge import JudgeClient, JudgeConfig, JudgeUnavailable
from maestro_megatron.eval.runner import EvalResult, evaluate

__all__ = ["EvalResult", "GenerationConfig", "Interval", "JudgeClient", "JudgeConfig",
           "JudgeUnavailable", "bootstrap_mean", "compare", "evaluate", "format_comparison",
           "paired_difference"]
