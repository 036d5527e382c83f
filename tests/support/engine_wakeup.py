"""Child process of tests/integration/test_engine_wakeup.py: a real CPU vLLM engine on a
tiny random Llama, `CALLS` generate calls each after an idle pause longer than the
worker's busy loop, so every call has to wake a parked reader by its notification.

    python -m tests.support.engine_wakeup DIR [CALLS] [PAUSE_S]

Prints WINDOW_BEGIN / WINDOW_END around the calls and, after them, one JSON line with
each call's seconds. Run it with VLLM_LOGGING_LEVEL=DEBUG: the engine processes then log
every shared-memory reader wait that ends by timeout ("Poller timed out").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from maestro_megatron.rollout import SamplingConfig, build_engine  # noqa: E402
from tests.support.tiny_llama import build_tiny_llama  # noqa: E402


def main(out: Path, calls: int, pause_s: float) -> None:
    model = build_tiny_llama(out, seed=0)
    engine = build_engine("vllm", str(model), seed=0, max_model_len=128)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=0)
    try:
        engine.generate(["the quick brown fox"], n=2, sampling=sampling)  # first call
        print("WINDOW_BEGIN", flush=True)
        seconds = []
        for i in range(calls):
            time.sleep(pause_s)
            start = time.perf_counter()
            engine.generate([f"a b c {i}"], n=2, sampling=sampling)
            seconds.append(time.perf_counter() - start)
        time.sleep(0.5)  # let the engine processes' last log lines land inside the window
        print("WINDOW_END", flush=True)
    finally:
        engine.close()
    print(json.dumps({"call_seconds": seconds}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20,
         float(sys.argv[3]) if len(sys.argv) > 3 else 1.3)
