"""Prompt data, the built-in tiny prompt set, and the tokenizer trainer."""

from maestro_megatron.data.prompts import (
    ALIASES,
    BUILTIN_PROMPTS,
    DataError,
    PromptRecord,
    PromptStream,
    builtin_texts,
    describe_splits,
    load_builtin_rows,
    load_data_config,
    load_prompts,
    load_sft_rows,
    select_split,
    split_counts,
)

__all__ = ["ALIASES", "BUILTIN_PROMPTS", "DataError", "PromptRecord", "PromptStream",
           "builtin_texts", "load_builtin_rows", "load_data_config", "load_prompts",
           "describe_splits", "load_sft_rows", "select_split", "split_counts"]
