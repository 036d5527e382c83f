"""The model a megatron checkpoint holds, for megatron-to-hf: architecture, ModelConfig,
the base ``config.json`` and the tokenizer, checked against the checkpoint's shapes.

Where the description comes from:

- ``maestro_weights.json`` beside the torch_dist files (hf-to-megatron wrote it); the
  tokenizer is ``hf_assets/`` (or ``--tokenizer``);
- else a ModelConfig or recipe file (``--config``; by default ``RUN/recipe.yaml`` for a
  training checkpoint ``RUN/checkpoints/step_N``), read as the trainer reads it: with
  ``model.hf_path`` the architecture and sizes are that directory's ``config.json``;
  without, the recipe's sizes and the vocabulary size of the run's tokenizer
  (``--tokenizer``, else ``RUN/tokenizer``, else ``RUN/hf_final``).

The checkpoint's tensors are the truth: a config that disagrees with them (layers,
hidden, FFN, heads x channels, query groups, tied output layer, QKV bias, q/k norms,
vocabulary) is refused naming the key; the embedding's rows past the vocabulary must be
exactly the padding to a multiple of ``make_vocab_size_divisible_by x TP`` (export
checks that they are zero), so no real row is ever dropped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights.dcp_read import row_splits, tensor_metadata
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.hf_io import TOKENIZER_FILES, read_config

META_NAME = "maestro_weights.json"
"""Beside the torch_dist files: architecture, ModelConfig, source HF config, layout."""
ASSETS_DIR = "hf_assets"
"""Tokenizer / generation files of the source HF directory, kept for the way back."""
TRAINER_META = "meta.json"
"""A training checkpoint's own metadata (trainer/checkpoint.py): the saving layout."""

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
_QKV = "decoder.layers.self_attention.linear_qkv.weight"
_PROJ = "decoder.layers.self_attention.linear_proj.weight"
_FC2 = "decoder.layers.mlp.linear_fc2.weight"
_FLAGS = (("tie_embeddings", OUTPUT, False, "an untied output layer"),
          ("add_qkv_bias", "decoder.layers.self_attention.linear_qkv.bias", True, "QKV biases"),
          ("qk_layernorm", "decoder.layers.self_attention.q_layernorm.weight", True,
           "q/k layernorms"))
"""(ModelConfig flag, key present iff ..., ... when the flag is this value, what it is)."""


@dataclass(frozen=True)
class CheckpointModel:
    """What megatron-to-hf writes from a checkpoint."""

    architecture: str
    cfg: ModelConfig
    """Sizes as the checkpoint holds them; ``vocab_size`` is the real (unpadded) one."""
    hf_base: dict | None
    """config.json keys ModelConfig does not describe (token ids, rope scaling)."""
    tokenizer_dir: Path | None
    """Tokenizer files copied into the output (None: none found)."""


def key_prefix(shapes: dict) -> str:
    """Prefix of the model keys (``""`` for checkpoints of megatron-core models)."""
    found = [key[: -len(FINAL_NORM)] for key in shapes if key.endswith(FINAL_NORM)]
    if not found:
        raise ConversionError(f"no {FINAL_NORM} in the checkpoint: not a GPT model checkpoint")
    return min(found, key=len)  # optimizer state may repeat parameter names under a prefix


def run_dir_of(ckpt: Path) -> Path | None:
    """RUN for a training checkpoint ``RUN/checkpoints/step_N``, else None."""
    ckpt = Path(ckpt).absolute()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def _has_tokenizer(path: Path | None) -> bool:
    return path is not None and any((Path(path) / f).is_file() for f in TOKENIZER_FILES[:3])


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not _has_tokenizer(path):
        raise ConversionError(f"--tokenizer {path}: no tokenizer files there "
                              f"({', '.join(TOKENIZER_FILES[:3])})")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # broken tokenizer files: many exception types
        raise ConversionError(f"{path}: cannot load the tokenizer ({exc})") from None


def load_model_section(path: Path) -> tuple[ModelConfig, bool]:
    """(ModelConfig, whether it names its architecture) of a recipe (``model:``
    section, ``defaults:`` inheritance) or of a file of ModelConfig fields."""
    import yaml

    from maestro_megatron.config.loader import build_dataclass, load_recipe

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConversionError(f"--config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"--config {path}: not a mapping")
    if "model" in data or "defaults" in data:
        return load_recipe(path).model, True  # ConfigError (a UserError) names the key
    return build_dataclass(ModelConfig, data, "model", str(path)), "architecture" in data


def _infer_architecture(cfg: ModelConfig) -> str:
    return ("Qwen3ForCausalLM" if cfg.qk_layernorm else
            "Qwen2ForCausalLM" if cfg.add_qkv_bias else "LlamaForCausalLM")


@dataclass(frozen=True)
class _Vocab:
    note: str
    """Where the vocabulary size comes from, as the start of an error message."""
    padded_rows: int | None = None
    """Rows it is padded to, when the source says (maestro_weights.json)."""
    tokenizer_len: int | None = None
    tokenizer: Path | None = None


def describe(ckpt: Path, *, config_path: Path | None = None, architecture: str | None = None,
             tokenizer: Path | None = None) -> CheckpointModel:
    """The model of the torch_dist checkpoint ``ckpt`` (see the module docstring)."""
    ckpt = Path(ckpt)
    shapes = {k: v[0] for k, v in tensor_metadata(ckpt).items()}
    prefix = key_prefix(shapes)
    if config_path is None and (ckpt / META_NAME).is_file():
        model, vocab = _from_meta(ckpt, tokenizer)
    else:
        model, vocab = _from_config(ckpt, config_path, architecture, tokenizer)
    check_sizes(model.cfg, shapes, prefix)
    check_vocab(model.cfg, vocab, shapes[prefix + EMBEDDING][0],
                lambda: _saved_tp(ckpt, prefix))
    return model


def _from_meta(ckpt: Path, tokenizer: Path | None) -> tuple[CheckpointModel, _Vocab]:
    file = ckpt / META_NAME
    try:
        meta = json.loads(file.read_text())
        cfg = ModelConfig(**meta["model_config"])
        arch = meta["architecture"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConversionError(f"{file}: not a valid converter metadata file ({exc})") from None
    tok_len = None
    if tokenizer is not None:
        tok_len = len(_load_tokenizer(tokenizer))
    tok_dir = Path(tokenizer) if tokenizer is not None else ckpt / ASSETS_DIR
    vocab = _Vocab(f"{file} says {cfg.vocab_size}", meta.get("padded_vocab_size"), tok_len,
                   tokenizer)
    return CheckpointModel(arch, cfg, meta.get("hf_config"),
                           tok_dir if _has_tokenizer(tok_dir) else None), vocab


def _from_config(ckpt: Path, config_path: Path | None, architecture: str | None,
                 tokenizer: Path | None) -> tuple[CheckpointModel, _Vocab]:
    run_dir = run_dir_of(ckpt)
    if config_path is None:
        if run_dir is None or not (run_dir / "recipe.yaml").is_file():
            raise ConversionError(f"{ckpt / META_NAME} not found: pass --config RECIPE "
                                  "(and --tokenizer DIR) for a checkpoint this tool did "
                                  "not write")
        config_path = run_dir / "recipe.yaml"
    cfg, named_arch = load_model_section(config_path)
    if tokenizer is None:
        candidates = [run_dir / "tokenizer", run_dir / "hf_final"] if run_dir else []
        if cfg.hf_path:
            candidates.insert(1, Path(cfg.hf_path))
        tokenizer = next((c for c in candidates if _has_tokenizer(c)), None)
    tok = _load_tokenizer(tokenizer) if tokenizer is not None else None
    if cfg.hf_path:  # the trainer's rule: sizes and vocabulary from the HF config.json
        return _from_hf_path(cfg, config_path, architecture, run_dir, tokenizer, tok)
    arch = architecture or (cfg.architecture if named_arch else _infer_architecture(cfg))
    cfg = replace(cfg, architecture=arch)
    if tok is None:
        print(f"warning: no tokenizer found for {ckpt} (pass --tokenizer DIR); the "
              f"vocabulary size is {config_path}'s and no tokenizer files are written",
              file=sys.stderr)
        vocab = _Vocab(f"the config says {cfg.vocab_size} (in {config_path})")
        return CheckpointModel(arch, cfg, None, None), vocab
    if (Path(tokenizer) / "config.json").is_file():  # an HF model directory (hf_final)
        size = int(read_config(Path(tokenizer)).get("vocab_size") or len(tok))
        note = f"{Path(tokenizer) / 'config.json'} says {size}"
    else:  # the trainer's rule without hf_path: vocab_size = len(tokenizer)
        size, note = len(tok), f"the tokenizer in {tokenizer} has {len(tok)} tokens"
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id}
    return (CheckpointModel(arch, replace(cfg, vocab_size=size), special, Path(tokenizer)),
            _Vocab(note, tokenizer_len=len(tok), tokenizer=Path(tokenizer)))


def _from_hf_path(cfg: ModelConfig, config_path: Path, architecture: str | None,
                  run_dir: Path | None, tokenizer: Path | None, tok
                  ) -> tuple[CheckpointModel, _Vocab]:
    from maestro_megatron.weights.registry import mapping_for_hf_config

    hf_dir = Path(cfg.hf_path)
    if not (hf_dir / "config.json").is_file() and run_dir is not None:
        hf_dir = run_dir / "hf_final"  # the same model's export, when hf_path is elsewhere
    if not (hf_dir / "config.json").is_file():
        raise ConversionError(f"model.hf_path: {cfg.hf_path} has no config.json (the model's "
                              f"sizes and vocabulary come from it) (in {config_path})")
    hf = read_config(hf_dir)
    mapping = mapping_for_hf_config(hf)
    if architecture is not None and architecture != mapping.architecture:
        raise ConversionError(f"--architecture {architecture}: {hf_dir / 'config.json'} "
                              f"names {mapping.architecture}")
    full = mapping.model_config(hf)
    full = replace(full, make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by,
                   init_method_std=cfg.init_method_std, architecture=mapping.architecture,
                   hf_path=cfg.hf_path)
    vocab = _Vocab(f"{hf_dir / 'config.json'} says {full.vocab_size}",
                   tokenizer_len=len(tok) if tok is not None else None, tokenizer=tokenizer)
    return CheckpointModel(mapping.architecture, full, hf, tokenizer), vocab


def _saved_tp(ckpt: Path, prefix: str) -> int:
    """The TP size the checkpoint was saved with (its vocabulary padding multiple)."""
    try:
        return int(json.loads((ckpt / TRAINER_META).read_text())["layout"]["tp_size"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return row_splits(ckpt, prefix + EMBEDDING)  # one chunk of rows per TP rank


def _disagree(field: str, says, found: str) -> ConversionError:
    return ConversionError(f"model.{field}: the config says {says}, {found}")


def check_sizes(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], prefix: str) -> None:
    """Every size and flag of ``cfg`` that the checkpoint's tensors determine agrees."""
    for key in (EMBEDDING, _QKV, _PROJ, _FC2):
        if prefix + key not in shapes:
            raise ConversionError(f"checkpoint has no tensor {prefix + key}: not a GPT model "
                                  "checkpoint of a supported architecture")
    hidden = shapes[prefix + EMBEDDING][1]
    layers, qkv_rows, _ = shapes[prefix + _QKV]
    q_width = shapes[prefix + _PROJ][-1]
    ffn = shapes[prefix + _FC2][-1]
    head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    q_rows, kv_rows = cfg.num_attention_heads * head_dim, 2 * cfg.num_query_groups * head_dim
    ck = "the checkpoint's"
    if cfg.hidden_size != hidden:
        raise _disagree("hidden_size", cfg.hidden_size, f"{ck} embedding has {hidden} columns")
    if cfg.num_layers != layers:
        raise _disagree("num_layers", cfg.num_layers, f"{ck} {_QKV} stacks {layers} layers")
    if cfg.ffn_hidden_size != ffn:
        raise _disagree("ffn_hidden_size", cfg.ffn_hidden_size, f"{ck} {_FC2} has {ffn} columns")
    if q_rows != q_width:
        raise _disagree("num_attention_heads", f"{cfg.num_attention_heads} heads x {head_dim} "
                        f"channels = {q_rows}", f"{ck} {_PROJ} has {q_width} columns")
    if q_width + kv_rows != qkv_rows:
        raise _disagree("num_query_groups", f"{cfg.num_query_groups} (2 x {cfg.num_query_groups}"
                        f" x {head_dim} = {kv_rows} key/value rows)",
                        f"{ck} {_QKV} has {qkv_rows - q_width} key/value rows")
    for field, key, present_when, what in _FLAGS:
        value, present = getattr(cfg, field), prefix + key in shapes
        if present != (value == present_when):
            has = "has" if present else "lacks"
            raise _disagree(field, str(value).lower(), f"but the checkpoint {has} {key} "
                            f"({what})")
    if prefix + OUTPUT in shapes and shapes[prefix + OUTPUT] != shapes[prefix + EMBEDDING]:
        raise ConversionError(f"checkpoint tensors {OUTPUT} {list(shapes[prefix + OUTPUT])} "
                              f"and {EMBEDDING} {list(shapes[prefix + EMBEDDING])} differ")


def check_vocab(cfg: ModelConfig, vocab: _Vocab, rows: int, saved_tp) -> None:
    """The embedding's ``rows`` are the vocabulary plus exactly its padding.

    saved_tp: () -> the TP size that padded it (called only when needed).
    """
    size = cfg.vocab_size
    if vocab.tokenizer_len is not None and vocab.tokenizer_len > rows:
        raise ConversionError(f"the tokenizer in {vocab.tokenizer} has {vocab.tokenizer_len} "
                              f"tokens, the checkpoint's embedding only {rows} rows")
    if size > rows:
        raise ConversionError(f"model.vocab_size: {vocab.note}, the checkpoint's embedding "
                              f"has {rows} rows")
    if vocab.tokenizer_len is not None and vocab.tokenizer_len > size:
        raise ConversionError(f"the tokenizer in {vocab.tokenizer} has {vocab.tokenizer_len} "
                              f"tokens, more than model.vocab_size: {vocab.note}")
    if vocab.padded_rows is not None:
        expected, how = vocab.padded_rows, "as the converter padded it"
    else:
        tp = saved_tp()
        multiple = cfg.make_vocab_size_divisible_by * tp
        expected = -(-size // multiple) * multiple
        how = f"make_vocab_size_divisible_by={cfg.make_vocab_size_divisible_by} x TP={tp}"
    if rows != expected:
        raise ConversionError(f"model.vocab_size: {vocab.note}, which pads to {expected} rows "
                              f"({how}), but the checkpoint's embedding has {rows} rows")
