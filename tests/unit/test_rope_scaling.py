"""Llama 3.1 RoPE scaling: the inverse frequencies against transformers' own llama3 init,
config.json <-> ModelConfig both ways, and the run's sequence length against the
checkpoint's positions (no megatron import)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch

from maestro_megatron.config.schema import ModelConfig, RopeScalingConfig
from maestro_megatron.errors import UserError
from maestro_megatron.megatron.rope import llama3_inv_freq, scaled_inv_freq
from maestro_megatron.trainer.preflight import check_seq_length
from maestro_megatron.weights import ConversionError, get_mapping
from maestro_megatron.weights.hf_model import hf_model_config

LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SMALL = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    """Unscaled RoPE inverse frequencies [dim / 2], as megatron's RotaryEmbedding makes them."""
    return 1.0 / (int(base) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


@pytest.mark.parametrize(("scaling", "head_dim", "positions"),
                         [(LLAMA31, 128, 131072), (SMALL, 16, 128)])
def test_llama3_inv_freq_equals_transformers(scaling, head_dim, positions):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=positions,
                         rope_parameters={**scaling, "rope_theta": 500000.0})
    expected, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = _base_inv_freq(500000.0, head_dim)
    got = scaled_inv_freq(base, RopeScalingConfig(**scaling))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # bitwise
    assert attention_factor == 1.0  # llama3 does not scale cos/sin: nothing else to apply
    # Teeth: some frequencies are kept, some divided by the factor, some in between.
    ratio = base / got
    assert (ratio == 1).any() and torch.isclose(ratio, torch.tensor(8.0)).any()
    assert ((ratio > 1.01) & (ratio < 7.99)).any()


def test_llama3_bands_by_hand():
    # L = 64, a = 1, b = 4: wavelengths < 16 kept, > 64 divided by 2; 32: s = (2 - 1) / 3.
    freqs = 2 * torch.pi / torch.tensor([8.0, 32.0, 128.0])
    got = llama3_inv_freq(freqs, factor=2.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64)
    s = 1 / 3
    torch.testing.assert_close(got, freqs * torch.tensor([1.0, (1 - s) / 2 + s, 0.5]))
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        scaled_inv_freq(freqs, RopeScalingConfig(rope_type="yarn"))


HF = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
      "vocab_size": 250, "max_position_embeddings": 131072, "tie_word_embeddings": False}


def test_config_json_llama3_both_formats_and_back():
    mapping = get_mapping("LlamaForCausalLM")
    want = RopeScalingConfig(**LLAMA31)
    hf4 = {**HF, "rope_theta": 5e5, "rope_scaling": LLAMA31}  # transformers 4
    hf5 = {**HF, "rope_parameters": {**LLAMA31, "rope_theta": 5e5}}  # transformers 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # llama3 is represented: no warning
        assert mapping.model_config(hf4).rope_scaling == want
        assert mapping.model_config(hf5).rope_scaling == want
    cfg = mapping.model_config(hf5)
    assert mapping.model_config(mapping.hf_config(cfg)) == cfg
    assert mapping.hf_config(cfg)["rope_scaling"] == LLAMA31  # no base: the 4.x key
    back5 = mapping.hf_config(cfg, base=hf5)
    assert back5["rope_parameters"] == {**LLAMA31, "rope_theta": 5e5}
    # original_max_position_embeddings falls back to max_position_embeddings (transformers).
    short = {k: v for k, v in LLAMA31.items() if k != "original_max_position_embeddings"}
    assert (mapping.model_config({**HF, "rope_scaling": short}).rope_scaling
            .original_max_position_embeddings == 131072)
    with pytest.raises(ConversionError, match="llama3 rope scaling lacks 'factor'"):
        mapping.model_config({**HF, "rope_scaling": {"rope_type": "llama3"}})


def test_model_config_survives_json():
    """The converter's metadata stores asdict(cfg) as JSON and rebuilds ModelConfig(**...)."""
    from dataclasses import asdict

    cfg = ModelConfig(seq_length=4096, max_position_embeddings=131072,
                      rope_scaling=RopeScalingConfig(**LLAMA31))
    back = ModelConfig(**json.loads(json.dumps(asdict(cfg))))
    assert back == cfg and isinstance(back.rope_scaling, RopeScalingConfig)


def test_other_rope_types_still_warn_and_stay_unscaled():
    yarn = {**HF, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                   "original_max_position_embeddings": 32768}}
    with pytest.warns(UserWarning, match="rope type 'yarn' is not represented"):
        cfg = get_mapping("LlamaForCausalLM").model_config(yarn)
    assert cfg.rope_scaling is None
    back = get_mapping("LlamaForCausalLM").hf_config(cfg, base=yarn)
    assert back["rope_scaling"]["rope_type"] == "yarn"  # the source's key is kept


def test_written_config_loads_in_transformers_with_the_scaling():
    from transformers import AutoConfig

    cfg = ModelConfig(rope_scaling=RopeScalingConfig(**SMALL), rotary_base=5e5)
    hf = get_mapping("LlamaForCausalLM").hf_config(cfg)
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    assert config.rope_parameters == {**SMALL, "rope_theta": 5e5}
    assert config.max_position_embeddings == cfg.seq_length  # None: seq_length


def _hf_dir(tmp_path, **keys):
    (tmp_path / "config.json").write_text(json.dumps({**HF, **keys}))
    return tmp_path


def test_training_keeps_the_recipe_seq_length(tmp_path):
    hf_dir = _hf_dir(tmp_path, max_position_embeddings=40960, rope_scaling=LLAMA31)
    recipe = ModelConfig(seq_length=4096, hf_path=str(hf_dir))
    cfg, _ = hf_model_config(hf_dir, base=recipe)
    assert (cfg.seq_length, cfg.max_position_embeddings) == (4096, 40960)
    assert cfg.rope_scaling == RopeScalingConfig(**LLAMA31)
    hf = get_mapping(cfg.architecture).hf_config(cfg)  # an export keeps the positions
    assert hf["max_position_embeddings"] == 40960
    converter, _ = hf_model_config(hf_dir)  # no recipe: the checkpoint's own length
    assert converter.seq_length == 40960


def test_seq_length_beyond_the_checkpoint_is_a_user_error(tmp_path):
    hf_dir = _hf_dir(tmp_path, max_position_embeddings=2048)
    check_seq_length(ModelConfig(seq_length=2048, hf_path=str(hf_dir)))
    with pytest.raises(UserError) as err:
        check_seq_length(ModelConfig(seq_length=4096, hf_path=str(hf_dir)))
    assert str(err.value).startswith("model.seq_length: 4096 exceeds max_position_embeddings")
    assert "= 2048" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="model.seq_length: 300 exceeds "
                                        "model.max_position_embeddings = 256"):
        check_seq_length(ModelConfig(seq_length=300, max_position_embeddings=256))
    check_seq_length(ModelConfig(seq_length=300))  # None: seq_length itself
    with pytest.raises(UserError, match="model.rope_scaling.rope_type: 'yarn'"):
        check_seq_length(replace(ModelConfig(), rope_scaling=RopeScalingConfig("yarn")))
