"""What any converter process pays before touching a weight: the interpreter and the
imports (torch, megatron-core, transformers, safetensors). bench/converter.py runs it
like the converter (one process, or under torchrun) to separate that fixed floor from
the per-byte cost."""

import megatron.core  # noqa: F401
import safetensors.torch  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
