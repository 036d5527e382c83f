"""Eval outputs: the printed table and the atomically written output directory.

An output directory holds ``summary.json`` (keys: README "maestro eval"),
``samples.jsonl`` (one row per response) and ``table.txt`` (the printed table). It is
written to a temporary sibling and renamed into place, so a reader never sees half an
evaluation; an earlier result in the same place is replaced only once the new one is
complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from maestro_megatron.eval.metrics import headline


def _pct(interval: dict | None) -> str:
    if interval is None:
        return "-"
    return (f"{100 * interval['value']:.1f} "
            f"[{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS = ("task", "n", "accuracy % [95% CI]", "exact %", "option %", "format %", "pref",
           "judged", "unparseable", "errors", "truncated")


def _row(name: str, block: dict, metric: str, judged: bool) -> list[str]:
    c = block["counts"]
    return [name, str(c["n"]), _pct(headline(block, metric, judged)), _pct(block["exact_match"]),
            _pct(block["option_match"]), _num(100 * block["format_rate"]
                                              if block["format_rate"] is not None else None,
                                              ".1f"),
            _num(block["pref_mean"], ".3f"), str(c["judged"]), str(c["unparseable"]),
            str(c["judge_errors"]), str(c["truncated"])]


def format_table(summary: dict) -> str:
    """Plain-text table: one row per task, then "all"."""
    metric, judged = summary["metric"], summary["judge"] is not None
    rows = [_row(task, block, metric, judged) for task, block in summary["tasks"].items()]
    rows.append(_row("all", summary["overall"], metric, judged))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    what = "judge accuracy" if summary["judge"] else f"{metric} match"
    head = (f"{summary['name']} on {summary['benchmark']} ({summary['split'] or 'all rows'}), "
            f"accuracy = {what}")
    return "\n".join([head, *lines]) + "\n"


def write_outputs(out_dir: Path, summary: dict, samples: list[dict], table: str) -> Path:
    """Write summary.json, samples.jsonl and table.txt into `out_dir` atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as f:
            for row in samples:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "table.txt").write_text(table, encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n",
                                          encoding="utf-8")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir
