"""LLM-judge client for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Standard library only (urllib + threads). Per request: POST {model, messages,
temperature, max_tokens}; the reply text is ``choices[0].message.content``.

- Retried with exponential backoff (delay_a = backoff_s * 2^a, capped at 30 s): refused
  or reset connections, timeouts, HTTP 429 and 5xx, and malformed bodies (not JSON,
  no choices). A transport failure that outlasts the retries stops the evaluation with
  `JudgeUnavailable` (a UserError naming the URL); every judgment already answered is
  in the cache, so the rerun resumes.
- HTTP 401 / 403 / 404 (bad key, wrong URL or model name) stop at once: retrying
  cannot help. Other 4xx (e.g. a prompt longer than the judge's context) and bodies
  still malformed after the retries fail that sample only; it is counted as an error,
  not cached, and never guessed.
- At most `concurrency` requests in flight (a thread pool); each has `timeout_s`.
- The API key is read from the environment variable `api_key_env` and sent only as a
  bearer header; it is never printed, logged or stored.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from maestro_megatron.errors import UserError
from maestro_megatron.eval.cache import JudgeCache, Judgment
from maestro_megatron.eval.verdict import parse_verdict, prompt_hash

FATAL_STATUS = (401, 403, 404)
MAX_DELAY_S = 30.0


class JudgeUnavailable(UserError):
    """The judge endpoint cannot be used (down, refusing, wrong URL/model/key)."""


class _Retry(Exception):
    """A failure worth another attempt (transport, 429/5xx, malformed body)."""

    def __init__(self, what: str, transport: bool):
        super().__init__(what)
        self.transport = transport


class _SampleFailed(Exception):
    """A failure of this request only (4xx other than auth/not-found)."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask the judge (CLI: --judge-url, --judge-model, ...)."""

    url: str
    """Server base URL (http://host:8000 or .../v1) or the full chat-completions URL."""
    model: str
    """Model name as the server knows it (vllm serve --served-model-name)."""
    api_key_env: str = "MAESTRO_JUDGE_API_KEY"
    """Environment variable holding the API key (unset: no Authorization header)."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout_s: float = 120.0
    """Per-request timeout (connect + read)."""
    max_retries: int = 4
    """Retries after the first attempt (5 attempts in all by default)."""
    backoff_s: float = 1.0
    """First retry delay; doubles each retry."""
    max_tokens: int = 512
    """Judge reply cap (room for a short justification and the verdict line)."""
    temperature: float = 0.0
    """0: greedy, so a cached judgment is what the judge would say again."""

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


@dataclass
class JudgeStats:
    """What one `judge_all` call did (printed and written to summary.json)."""

    cached: int = 0
    """Judgments answered from the cache (no request)."""
    new: int = 0
    """Judgments answered by the server in this call."""
    errors: int = 0
    """Judgments that failed (malformed after retries, rejected request)."""
    requests: int = 0
    """HTTP requests sent, retries included (0 when everything was cached)."""
    last_error: str | None = None
    """Why the last failed judgment failed (shown with the counts)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict:
        return {"cached": self.cached, "new": self.new, "errors": self.errors,
                "requests": self.requests, "last_error": self.last_error}


class JudgeClient:
    """Judges message lists through the endpoint, with the cache in front."""

    def __init__(self, config: JudgeConfig, cache: JudgeCache):
        if config.concurrency < 1:
            raise UserError(f"--judge-concurrency must be >= 1, got {config.concurrency}")
        self.config = config
        self.cache = cache
        self._key = os.environ.get(config.api_key_env) or None

    def _post(self, messages: list[dict[str, str]]) -> str:
        """One attempt: the reply text, or _Retry / _SampleFailed / JudgeUnavailable."""
        cfg = self.config
        body = json.dumps({"model": cfg.model, "messages": messages,
                           "temperature": cfg.temperature, "max_tokens": cfg.max_tokens})
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(cfg.endpoint, data=body.encode("utf-8"),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            what = f"HTTP {exc.code} ({detail[:200]})"
            if exc.code in FATAL_STATUS:
                raise JudgeUnavailable(f"judge {cfg.endpoint} (model {cfg.model!r}): "
                                       f"{what}") from None
            if exc.code == 429 or exc.code >= 500:
                raise _Retry(what, transport=True) from None
            raise _SampleFailed(what) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError,
                http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retry(f"{type(reason).__name__}: {reason}", transport=True) from None
        return _reply_text(raw)

    def ask(self, messages: list[dict[str, str]], stats: JudgeStats) -> Judgment | None:
        """The judgment of one prompt (cache first); None when this sample failed."""
        cfg = self.config
        digest = prompt_hash(messages)
        cached = self.cache.get(cfg.model, digest)
        if cached is not None:
            stats.add(cached=1)
            return cached
        for attempt in range(cfg.max_retries + 1):
            stats.add(requests=1)
            try:
                reply = self._post(messages)
            except _SampleFailed as exc:
                stats.add(errors=1)
                stats.last_error = str(exc)
                return None
            except _Retry as exc:
                if attempt == cfg.max_retries:
                    if exc.transport:
                        raise JudgeUnavailable(
                            f"judge {cfg.endpoint} unreachable after {attempt + 1} attempts "
                            f"({exc}); {len(self.cache)} judgments are cached in "
                            f"{self.cache.path or 'memory'}: rerun to resume") from None
                    stats.add(errors=1)
                    stats.last_error = str(exc)
                    return None
                time.sleep(min(cfg.backoff_s * 2 ** attempt, MAX_DELAY_S))
                continue
            judgment = Judgment(parse_verdict(reply), reply)
            self.cache.put(cfg.model, digest, judgment)
            stats.add(new=1)
            return judgment
        raise AssertionError("unreachable")

    def judge_all(self, prompts: Sequence[list[dict[str, str]]]
                  ) -> tuple[list[Judgment | None], JudgeStats]:
        """Judge every prompt, `concurrency` at a time; results in prompt order."""
        stats = JudgeStats()
        results: list[Judgment | None] = [None] * len(prompts)
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency,
                                  thread_name_prefix="judge")
        try:
            futures = {pool.submit(self.ask, m, stats): i for i, m in enumerate(prompts)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results, stats


def _reply_text(raw: bytes) -> str:
    """choices[0].message.content of a chat-completions body; _Retry when malformed."""
    try:
        body = json.loads(raw)
        content = body["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise _Retry(f"malformed response body: {raw[:120]!r}", transport=False) from None
    if content is None:
        return ""
    if not isinstance(content, str):
        raise _Retry(f"malformed response body: content is {type(content).__name__}",
                     transport=False)
    return content
