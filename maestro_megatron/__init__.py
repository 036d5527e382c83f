"""maestro-megatron: MAESTRO multi-reward GRPO on megatron-core (arXiv 2601.07208)."""

__version__ = "0.1.0"
