"""The judge client against a real HTTP server (http.server in a thread, 127.0.0.1) that
misbehaves on purpose: down, slow, HTTP 500, malformed JSON, no verdict, wrong model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from maestro_megatron.eval.cache import JudgeCache
from maestro_megatron.eval.judge import JudgeClient, JudgeConfig, JudgeUnavailable
from maestro_megatron.eval.metrics import summarize
from maestro_megatron.eval.runner import check_judge_reachable
from maestro_megatron.eval.verdict import load_template, render_messages


class FakeJudge:
    """A chat-completions server whose replies follow a script of actions, one per
    request (the last action repeats): ("ok", text), ("status", code), ("malformed",),
    ("stall",): hold the request until the test ends (a client timeout)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append(body)
                    judge.headers.append(dict(self.headers))
                    action = judge.script[min(len(judge.requests), len(judge.script)) - 1]
                    judge.in_flight += 1
                    judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
                try:
                    judge.respond(self, action, body)
                finally:
                    with judge.lock:
                        judge.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, handler, action, body):
        kind = action[0]
        if kind == "stall":
            self.release.wait(10)
            return
        if kind == "status":
            payload, code = b'{"error": "boom"}', action[1]
        elif kind == "malformed":
            payload, code = b'{"choices": [ {"message": ', 200
        else:
            text = action[1](body) if callable(action[1]) else action[1]
            payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": text}}]}).encode()
            code = 200
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out first (a loaded machine): it retries

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        servers.append(FakeJudge(script))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


TEMPLATE = load_template()


def prompts(n, tag="q"):
    return [render_messages(TEMPLATE, f"{tag} {i}?", str(i), str(i)) for i in range(n)]


def client(url, cache, **kw):
    cfg = JudgeConfig(url=url, model="judge", backoff_s=0.01, **kw)
    return JudgeClient(cfg, cache)


CORRECT = ("ok", "Same number.\nVERDICT: CORRECT")


def test_verdicts_are_parsed_and_a_cache_hit_sends_no_request(serve, tmp_path):
    server = serve(CORRECT)
    path = tmp_path / "cache.jsonl"
    results, stats = client(server.url, JudgeCache(path)).judge_all(prompts(3))
    assert [r.verdict for r in results] == [True, True, True]
    assert stats.as_dict() == {"cached": 0, "new": 3, "errors": 0, "requests": 3,
                               "last_error": None}
    assert len(path.read_text().splitlines()) == 3
    assert server.requests[0]["model"] == "judge"
    assert server.requests[0]["temperature"] == 0.0
    # requests run concurrently: they arrive in any order
    asked = sorted(r["messages"][0]["content"] for r in server.requests)
    assert all(f"Reference answer:\n{i}\n" in text for i, text in enumerate(asked))
    # a fresh client reading the same file: everything from the cache, no request
    results, stats = client(server.url, JudgeCache(path)).judge_all(prompts(3))
    assert stats.as_dict() == {"cached": 3, "new": 0, "errors": 0, "requests": 0,
                               "last_error": None}
    assert len(server.requests) == 3 and [r.verdict for r in results] == [True] * 3
    # the cache is keyed by the judge model too: another judge asks again
    other = JudgeClient(JudgeConfig(url=server.url, model="judge-2", backoff_s=0.01),
                        JudgeCache(path))
    assert other.judge_all(prompts(1))[1].requests == 1


def test_http_500_is_retried_then_succeeds(serve, tmp_path):
    server = serve(("status", 500), ("status", 503), CORRECT)
    results, stats = client(server.url, JudgeCache(tmp_path / "c.jsonl")).judge_all(prompts(1))
    assert results[0].verdict is True
    assert stats.requests == 3 and stats.new == 1 and len(server.requests) == 3


def test_a_timeout_is_retried(serve, tmp_path):
    server = serve(("stall",), CORRECT)
    results, stats = client(server.url, JudgeCache(tmp_path / "c.jsonl"),
                            timeout_s=2.0).judge_all(prompts(1))
    # >= 2: on a loaded machine a retry may time out too before it is answered
    assert results[0].verdict is True and stats.requests >= 2
    assert stats.requests == len(server.requests)


def test_timeouts_past_the_retries_stop_with_a_clear_error(serve, tmp_path):
    server = serve(("stall",))
    with pytest.raises(JudgeUnavailable,
                       match=r"unreachable after 2 attempts \(TimeoutError: timed out\)"):
        client(server.url, JudgeCache(tmp_path / "c.jsonl"), timeout_s=0.3,
               max_retries=1).judge_all(prompts(1))


def test_malformed_json_is_retried_then_counted_not_cached(serve, tmp_path):
    server = serve(("malformed",), CORRECT)
    results, stats = client(server.url, JudgeCache(tmp_path / "a.jsonl")).judge_all(prompts(1))
    assert results[0].verdict is True and stats.requests == 2

    server = serve(("malformed",))
    path = tmp_path / "b.jsonl"
    results, stats = client(server.url, JudgeCache(path), max_retries=2).judge_all(prompts(2))
    assert results == [None, None]
    assert stats.as_dict() == {"cached": 0, "new": 0, "errors": 2, "requests": 6,
                               "last_error": "malformed response body: "
                                             "b'{\"choices\": [ {\"message\": '"}
    assert not path.exists()  # nothing cached: a rerun asks again


def test_unparseable_verdicts_are_counted_never_guessed(serve, tmp_path):
    replies = {"q 0?": "VERDICT: INCORRECT", "q 1?": "It is basically correct.",
               "q 2?": "VERDICT: CORRECT\nVERDICT: INCORRECT", "q 3?": "verdict: correct"}

    def by_question(body):
        content = body["messages"][0]["content"]
        return next(v for k, v in replies.items() if f"Question:\n{k}" in content)

    server = serve(("ok", by_question))
    path = tmp_path / "c.jsonl"
    results, stats = client(server.url, JudgeCache(path)).judge_all(prompts(4))
    assert [r.verdict for r in results] == [False, None, None, True]
    assert stats.new == 4 and len(path.read_text().splitlines()) == 4  # all cached
    samples = [{"judge": {True: "correct", False: "incorrect", None: "unparseable"}[r.verdict],
                "exact_match": None, "option_match": None, "format": False,
                "truncated": False, "reference": "x", "row": i, "pref": None}
               for i, r in enumerate(results)]
    block = summarize(samples)
    assert block["counts"]["judged"] == 4 and block["counts"]["unparseable"] == 2
    assert block["judge_accuracy"]["value"] == 0.5  # 1 correct of the 2 parsed


def test_server_down_is_a_clear_error_and_the_partial_cache_is_kept(serve, tmp_path):
    server = serve(CORRECT)
    path = tmp_path / "c.jsonl"
    client(server.url, JudgeCache(path)).judge_all(prompts(2))
    server.stop()
    with pytest.raises(JudgeUnavailable) as err:
        client(server.url, JudgeCache(path), max_retries=1).judge_all(prompts(3))
    message = str(err.value)
    assert server.url in message and "2 judgments are cached" in message
    assert "Connection refused" in message or "ConnectionRefusedError" in message
    assert len(path.read_text().splitlines()) == 2  # what was paid for is kept
    with pytest.raises(JudgeUnavailable, match="cannot connect"):
        check_judge_reachable(JudgeConfig(url=server.url, model="judge"))


def test_wrong_model_stops_at_once_and_the_key_is_sent_but_never_shown(serve, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    server = serve(("status", 404))
    with pytest.raises(JudgeUnavailable, match="HTTP 404") as err:
        client(server.url, JudgeCache(tmp_path / "c.jsonl"),
               api_key_env="MY_JUDGE_KEY").judge_all(prompts(1))
    assert len(server.requests) == 1  # no retry: it cannot help
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in str(err.value)


def test_a_rejected_request_fails_that_sample_only(serve, tmp_path):
    server = serve(("status", 400), CORRECT)
    results, stats = client(server.url, JudgeCache(tmp_path / "c.jsonl"),
                            concurrency=1).judge_all(prompts(2))
    assert results[0] is None and results[1].verdict is True
    assert stats.errors == 1 and stats.requests == 2
    assert stats.last_error == 'HTTP 400 ({"error": "boom"})'


def test_concurrency_is_bounded(serve, tmp_path):
    server = serve(CORRECT)
    client(server.url, JudgeCache(None), concurrency=2).judge_all(prompts(12))
    assert len(server.requests) == 12 and 1 <= server.max_in_flight <= 2


@pytest.mark.parametrize("url,endpoint", [
    ("http://h:8000", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
    ("https://api.x.com/v1/chat/completions", "https://api.x.com/v1/chat/completions")])
def test_endpoint_from_url(url, endpoint):
    assert JudgeConfig(url=url, model="m").endpoint == endpoint


def test_a_torn_cache_line_is_skipped_and_appending_continues(tmp_path):
    from maestro_megatron.eval.cache import Judgment

    path = tmp_path / "c.jsonl"
    path.write_text('{"model": "m", "prompt_sha256": "a", "verdict": true, "reply": "x"}\n'
                    '{"model": "m", "prompt_sha2')
    cache = JudgeCache(path)
    assert len(cache) == 1 and cache.get("m", "a").verdict is True
    cache.put("m", "b", Judgment(None, "?"))
    again = JudgeCache(path)
    assert len(again) == 2 and again.get("m", "b") == Judgment(None, "?")
