"""The README's first lines are the two commands, and CI runs the test one verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands():
    lines = ROOT.joinpath("README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1:]
    return [line for line in block[:block.index("```")] if not line.startswith("#")]


def test_readme_starts_with_two_commands():
    assert ROOT.joinpath("README.md").read_text().splitlines()[2] == "```bash"
    assert len(_readme_commands()) == 2


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1]
    assert test_cmd in ROOT.joinpath(".ci/run").read_text()


def test_job_scripts_are_shellcheck_clean():
    import shutil
    import subprocess

    import pytest

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (tools/setup_test_services.sh installs it)")
    scripts = sorted(str(p) for p in [*ROOT.glob("slurm/**/*.sh"), *ROOT.glob("slurm/*.sbatch"),
                                      *ROOT.glob("tools/*.sh"), ROOT / ".ci/run"])
    assert len(scripts) >= 5
    proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
