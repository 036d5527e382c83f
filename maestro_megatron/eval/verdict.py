"""The judge prompt (a file in the repo) and the parsing of the judge's verdict.

`render_messages` fills the template's {question}, {reference} and {answer} (plain
replacement, so braces inside a sample are left alone) and returns the chat messages
sent to the judge. `parse_verdict` reads the reply strictly: the verdict is a line
``VERDICT: CORRECT`` or ``VERDICT: INCORRECT`` (case and markdown emphasis ignored)
outside any ``<think>`` block (reasoning judges such as Qwen3 think first); a reply with
no verdict line, or whose verdict lines disagree, is unparseable (None) and is counted,
never guessed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from maestro_megatron.errors import UserError

DEFAULT_PROMPT = Path(__file__).resolve().parent / "judge_prompt.txt"

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_VERDICT = re.compile(r"^[\s*_#>`]*verdict[\s*_`]*:[\s*_`]*(correct|incorrect)\b[\s*_`.!]*$",
                      re.IGNORECASE | re.MULTILINE)
FIELDS = ("{question}", "{reference}", "{answer}")


def load_template(path: str | Path | None = None) -> str:
    """The judge prompt template without its "#" comment lines; UserError when the file
    is missing or lacks one of the three fields."""
    path = Path(path) if path is not None else DEFAULT_PROMPT
    if not path.is_file():
        raise UserError(f"judge prompt {path}: file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    template = "\n".join(line for line in lines if not line.startswith("#")).strip() + "\n"
    missing = [f for f in FIELDS if f not in template]
    if missing:
        raise UserError(f"judge prompt {path}: missing field(s) {', '.join(missing)}")
    return template


def render_messages(template: str, question: str, reference: str, answer: str
                    ) -> list[dict[str, str]]:
    """[{"role": "user", "content": filled template}] (one user turn, no system turn:
    every chat template accepts it)."""
    text = template
    for field, value in zip(FIELDS, (question, reference, answer)):
        text = text.replace(field, value)
    return [{"role": "user", "content": text}]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """sha256 of the full judge prompt (canonical JSON of the messages)."""
    blob = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def parse_verdict(reply: str | None) -> bool | None:
    """True (CORRECT), False (INCORRECT) or None (no single verdict: unparseable)."""
    if not reply:
        return None
    visible = _THINK.sub("", reply)
    found = [m.group(1).lower() for m in _VERDICT.finditer(visible)]
    if not found or len(set(found)) > 1:
        return None
    return found[-1] == "correct"
