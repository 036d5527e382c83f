"""The megatron-core layer: process groups, model building, vocab-parallel math, forward.

Modules (imported directly; this package imports nothing heavy on its own):
- ``cpu_compat``: run megatron-core on CPU (gloo) by redirecting its CUDA-only calls.
- ``parallel``: layout validation, ``init_distributed`` -> ``ParallelGroups``.
- ``model``: the one ``TransformerConfig``, layer spec, ``GPTModel`` chunks (DDP/frozen).
- ``vocab_parallel``: log-probs and entropy over a vocab-sharded output layer.
- ``forward``: forward / forward+backward through megatron's pipeline schedules.
"""
