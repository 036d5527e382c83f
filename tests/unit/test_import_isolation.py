"""algorithms/, conductor/, rewards/, scalarizers/ are pure math: torch only (DESIGN.md 9);
the memory plan (plan/) is arithmetic without torch."""

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


def loaded_after_import(modules: tuple[str, ...], banned: tuple[str, ...]) -> list[str]:
    """The modules of the `banned` top-level packages a fresh interpreter has loaded
    after importing `modules`."""
    code = (f"import sys; import {', '.join(modules)}; "
            f"print([m for m in sys.modules if m.split('.')[0] in {banned!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_importing_pure_packages_loads_no_megatron_or_vllm():
    modules = ("maestro_megatron.algorithms", "maestro_megatron.conductor",
               "maestro_megatron.rewards", "maestro_megatron.scalarizers",
               "maestro_megatron.data.packing")
    assert loaded_after_import(modules, ("megatron", "vllm")) == []


def test_the_memory_plan_imports_no_torch():
    """maestro_megatron.plan's arithmetic (maestro plan) runs without torch."""
    modules = tuple(f"maestro_megatron.plan{m}" for m in
                    ("", ".memory", ".params", ".activations", ".roles", ".report"))
    assert loaded_after_import(modules, ("torch", "megatron", "vllm")) == []
