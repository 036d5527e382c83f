"""algorithms/, conductor/, rewards/, scalarizers/ are pure math: torch only (DESIGN.md 9)."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "maestro_megatron"
PURE = ("algorithms", "conductor", "rewards", "scalarizers")
FORBIDDEN = ("megatron", "vllm", "torch.distributed", "maestro_megatron.megatron")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_forbidden_import_statements():
    files = [f for sub in PURE for f in (PKG / sub).rglob("*.py")]
    assert len(files) >= 10
    for f in files:
        for name in _imports(f):
            assert not any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN), (
                f"{f.relative_to(PKG)} imports {name}")


def test_importing_pure_packages_loads_no_megatron_or_vllm():
    code = ("import sys; import maestro_megatron.algorithms, maestro_megatron.conductor, "
            "maestro_megatron.rewards, maestro_megatron.scalarizers, "
            "maestro_megatron.data.packing; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('megatron', 'vllm')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
