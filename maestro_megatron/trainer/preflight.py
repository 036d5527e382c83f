"""Checks of a run's inputs that are cheap and must fail before expensive work
(process groups, tokenizer training, model build, warm-up, engine start): the run
directory, the model path and the sequence length it allows, the data and warm-up
files, the preference scorer's model, and every prompt's length against the context.
Each failure is a `UserError` whose message names the key, the file and the line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from maestro_megatron.errors import RunDirError, UserError


def check_output_dir(output_dir: str) -> None:
    """run.output_dir is a directory we can write (created if missing)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run.output_dir: {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise RunDirError(f"run.output_dir: {path} is not writable ({exc.strerror})") from None


def check_model_path(hf_path: str | None) -> None:
    """model.hf_path, when set, is a local Hugging Face model directory."""
    if hf_path is None:
        return
    path = Path(hf_path)
    if not path.is_dir():
        raise UserError(f"model.hf_path: {path} is not a directory (a local Hugging Face "
                        "model directory is expected; nothing is downloaded)")
    if not (path / "config.json").is_file():
        raise UserError(f"model.hf_path: {path} has no config.json (not a Hugging Face "
                        "model directory)")


def check_seq_length(model) -> None:
    """model.seq_length <= the positions the model supports: config.json's
    max_position_embeddings with model.hf_path (model.max_position_embeddings without),
    and model.rope_scaling is a type the trainer applies. Call after check_model_path."""
    from maestro_megatron.megatron.rope import ROPE_TYPES

    if model.hf_path is None:
        limit, where = model.max_position_embeddings, "model.max_position_embeddings"
        if model.rope_scaling is not None and model.rope_scaling.rope_type not in ROPE_TYPES:
            raise UserError(f"model.rope_scaling.rope_type: {model.rope_scaling.rope_type!r} "
                            f"is not supported (one of {', '.join(ROPE_TYPES)})")
    else:
        config = Path(model.hf_path) / "config.json"
        try:
            limit = json.loads(config.read_text()).get("max_position_embeddings")
        except (OSError, ValueError, AttributeError) as exc:
            raise UserError(f"model.hf_path: {config} is not a readable JSON object "
                            f"({exc})") from None
        where = f"max_position_embeddings in {config}"
    if isinstance(limit, int) and model.seq_length > limit:
        raise UserError(f"model.seq_length: {model.seq_length} exceeds {where} = {limit} "
                        "(the positions the model supports; lower model.seq_length)")


def check_scorer(recipe) -> None:
    """A preference scorer's model directory exists (sequence classifier: required)."""
    from maestro_megatron.rewards import NEEDS_SCORER, reward_needs

    pref = recipe.rewards.pref
    if NEEDS_SCORER not in reward_needs(recipe.rewards.components):
        return
    if pref.model_path is None:
        if pref.scorer == "sequence_classifier":
            raise UserError("rewards.pref.model_path: the sequence_classifier scorer needs a "
                            "local reward-model directory")
        return
    if not (Path(pref.model_path) / "config.json").is_file():
        raise UserError(f"rewards.pref.model_path: {pref.model_path} is not a model "
                        "directory (no config.json)")


def check_data(recipe) -> list:
    """Load the training prompts and the warm-up pairs (DataError names file and line)."""
    from maestro_megatron.data.prompts import load_data_config, load_sft_rows

    records = load_data_config(recipe.data)
    if recipe.warmup.num_steps and recipe.warmup.path is not None:
        load_sft_rows(recipe.warmup.path)
    return records


def check_run_inputs(recipe) -> list:
    """Every cheap check, in the order a user would fix them; returns the prompts."""
    check_model_path(recipe.model.hf_path)
    check_seq_length(recipe.model)
    check_scorer(recipe)
    records = check_data(recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        check_output_dir(recipe.run.output_dir)
    return records


def check_prompt_lengths(records, tokenizer, recipe) -> None:
    """Every prompt leaves room for a full response: len(prompt tokens) <=
    model.seq_length - rollout.max_new_tokens (else vLLM refuses it mid-run)."""
    from maestro_megatron.trainer.rollouts import encode_prompt

    seq, new = recipe.model.seq_length, recipe.rollout.max_new_tokens
    room = seq - new
    if room < 1:
        raise UserError(f"rollout.max_new_tokens: {new} leaves no room for a prompt in "
                        f"model.seq_length={seq}")
    for record in records:
        length = len(encode_prompt(tokenizer, record.prompt, recipe.data))
        if length > room:
            raise UserError(f"{record.where}: prompt is {length} tokens, but model.seq_length "
                            f"{seq} - rollout.max_new_tokens {new} leaves {room} (key "
                            f"{recipe.data.prompt_key!r}; shorten it, drop the row, or raise "
                            "model.seq_length)")
