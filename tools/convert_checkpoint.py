"""Convert checkpoints between Hugging Face safetensors and megatron-core torch_dist.

    python tools/convert_checkpoint.py hf-to-megatron --hf DIR --out DIR --tp N --pp M
    torchrun --nproc-per-node N*M tools/convert_checkpoint.py hf-to-megatron ...
    python tools/convert_checkpoint.py megatron-to-hf --megatron DIR --out DIR

See the README section "Converting checkpoints". Same as ``maestro convert ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from maestro_megatron.weights.cli import main

    raise SystemExit(main())
