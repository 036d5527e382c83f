#!/usr/bin/env bash
# TRL for bench/against_trl.py, in the benchmark's own environment (bench/.venv-trl):
# never a dependency of the project. The new environment sees the project's packages
# (torch, transformers: the same versions in both runs, and no second torch download)
# through a .pth file, and gets TRL and what it needs on top, in its own directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
venv="${MAESTRO_TRL_VENV:-$here/.venv-trl}"
trl_version="${MAESTRO_TRL_VERSION:-1.16.0}"
project_python="$repo/.venv/bin/python"
if [ ! -x "$project_python" ]; then
    echo "error: $project_python not found: run tools/setup_env.sh first" >&2
    exit 2
fi
"$project_python" -m venv --without-pip "$venv" 2>/dev/null || "$project_python" -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
project_site="$("$project_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# an `import` line in a .pth runs at start-up: addsitedir also reads the project's own
# .pth files (its editable install of maestro_megatron), after this environment's
echo "import site; site.addsitedir('$project_site')" > "$site/maestro_project.pth"
"$venv/bin/python" -m ensurepip --upgrade >/dev/null 2>&1 || true
if ! "$venv/bin/python" -m pip install --quiet "trl==$trl_version"; then
    echo "error: pip could not install trl==$trl_version into $venv (is PyPI reachable?)" >&2
    exit 1
fi
"$venv/bin/python" -c 'import trl, transformers, torch; print("trl", trl.__version__, "transformers", transformers.__version__, "torch", torch.__version__)'
