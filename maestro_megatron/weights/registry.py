"""Architecture name -> mapping. Adding an architecture = one module + one entry here."""

from __future__ import annotations

from maestro_megatron.weights import llama, qwen2, qwen3
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.mapping import DecoderMapping

MAPPINGS: dict[str, DecoderMapping] = {
    m.architecture: m for m in (llama.MAPPING, qwen2.MAPPING, qwen3.MAPPING)
}


def get_mapping(architecture: str) -> DecoderMapping:
    """The mapping of an HF architecture name (raises ConversionError if unsupported)."""
    if architecture not in MAPPINGS:
        raise ConversionError(f"unsupported architecture {architecture!r}; supported: "
                              f"{', '.join(sorted(MAPPINGS))}")
    return MAPPINGS[architecture]


def mapping_for_hf_config(hf: dict) -> DecoderMapping:
    """The mapping named by an HF config dict's ``architectures``."""
    archs = hf.get("architectures") or []
    if len(archs) != 1:
        raise ConversionError(f"config.json must name exactly one architecture, got {archs!r}")
    return get_mapping(archs[0])
