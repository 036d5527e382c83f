"""Prompt data, the built-in tiny prompt set, and the tokenizer trainer."""

from maestro_megatron.data.prompts import (
    ALIASES,
    BUILTIN_PROMPTS,
    DataError,
    PromptRecord,
    PromptStream,
    builtin_texts,
    load_builtin_rows,
    load_data_config,
    load_prompts,
    load_sft_rows,
)

__all__ = ["ALIASES", "BUILTIN_PROMPTS", "DataError", "PromptRecord", "PromptStream",
           "builtin_texts", "load_builtin_rows", "load_data_config", "load_prompts",
           "load_sft_rows"]
