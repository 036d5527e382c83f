"""Judgment cache: one JSONL line per answered judge request, appended as it arrives.

Key = (judge model, sha256 of the full judge prompt). A line is written (and flushed)
the moment its reply is parsed, so an evaluation killed half-way keeps every judgment
it paid for and the next run asks only for the rest. Unparseable replies are cached
too (the same prompt to the same judge at temperature 0 gives the same reply); failed
requests are not. A torn last line (a kill mid-write) is skipped on load.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Judgment:
    """One judge reply: verdict True / False, or None when unparseable."""

    verdict: bool | None
    reply: str


class JudgeCache:
    """Thread-safe append-only JSONL cache; `path` None keeps it in memory only."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], Judgment] = {}
        self._needs_newline = False
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        self._needs_newline = bool(text) and not text.endswith("\n")  # torn last line
        for line in text.splitlines():
            try:
                row = json.loads(line)
                key = (row["model"], row["prompt_sha256"])
                self._entries[key] = Judgment(row["verdict"], row["reply"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a kill: that judgment is asked again

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model: str, digest: str) -> Judgment | None:
        with self._lock:
            return self._entries.get((model, digest))

    def put(self, model: str, digest: str, judgment: Judgment) -> None:
        """Remember a judgment and append it to the file at once."""
        row = {"model": model, "prompt_sha256": digest, "verdict": judgment.verdict,
               "reply": judgment.reply}
        with self._lock:
            self._entries[(model, digest)] = judgment
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    if self._needs_newline:
                        f.write("\n")
                        self._needs_newline = False
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
