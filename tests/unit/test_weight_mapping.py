"""HF <-> megatron weight layouts on small hand-checkable tensors (no megatron import)."""

from __future__ import annotations

import pytest
import torch

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights import MAPPINGS, ConversionError, get_mapping, layout
from maestro_megatron.weights.hf_io import plan_shards
from maestro_megatron.weights.units import hf_shapes, read_megatron_shard, to_hf, to_megatron


def col(*values):
    """A [n, 1] weight whose rows are the given labels."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)


def test_qkv_interleaves_per_query_group():
    # 4 query heads, 2 groups, head_dim 1: rows q0..q3 = 0..3, k = 10, 11, v = 20, 21.
    q, k, v = col(0, 1, 2, 3), col(10, 11), col(20, 21)
    qkv = layout.merge_qkv(q, k, v, num_query_groups=2)
    assert qkv.squeeze(1).tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    back = layout.split_qkv(qkv, num_heads=4, num_query_groups=2)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


def test_qkv_bias_and_head_dim_two():
    # head_dim 2: each head is two consecutive rows; 1-D biases use the same layout.
    q, k, v = torch.arange(8.0), torch.arange(10.0, 14.0), torch.arange(20.0, 24.0)
    qkv = layout.merge_qkv(q, k, v, num_query_groups=2)
    assert qkv.tolist() == [0, 1, 2, 3, 10, 11, 20, 21, 4, 5, 6, 7, 12, 13, 22, 23]
    assert all(torch.equal(a, b) for a, b in zip(layout.split_qkv(qkv, 4, 2), (q, k, v)))


def test_qkv_column_shard_is_whole_query_groups():
    qkv = layout.merge_qkv(col(0, 1, 2, 3), col(10, 11), col(20, 21), num_query_groups=2)
    assert layout.tp_shard("column", qkv, 0, 2).squeeze(1).tolist() == [0, 1, 10, 20]
    assert layout.tp_shard("column", qkv, 1, 2).squeeze(1).tolist() == [2, 3, 11, 21]


def test_fc1_tp_shard_is_gate_shard_then_up_shard():
    fc1 = layout.merge_fc1(col(0, 1, 2, 3), col(10, 11, 12, 13))
    shards = [layout.tp_shard("fc1", fc1, r, 2) for r in range(2)]
    assert shards[0].squeeze(1).tolist() == [0, 1, 10, 11]
    assert shards[1].squeeze(1).tolist() == [2, 3, 12, 13]
    assert torch.equal(layout.tp_gather("fc1", shards), fc1)
    gate, up = layout.split_fc1(fc1)
    assert gate.squeeze(1).tolist() == [0, 1, 2, 3] and up.squeeze(1).tolist() == [10, 11, 12, 13]


def test_row_and_replicated_splits():
    w = torch.arange(8.0).reshape(2, 4)
    shards = [layout.tp_shard("row", w, r, 2) for r in range(2)]
    assert shards[1].tolist() == [[2, 3], [6, 7]]
    assert torch.equal(layout.tp_gather("row", shards), w)
    assert layout.tp_shard("replicated", w, 1, 2) is w
    with pytest.raises(ValueError, match="not divisible"):
        layout.tp_shard("row", torch.zeros(2, 3), 0, 2)


def test_vocab_pad_and_unpad():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    padded = layout.pad_vocab(w, 4)
    assert padded.tolist() == [[1, 2], [3, 4], [5, 6], [0, 0]]
    assert torch.equal(layout.unpad_vocab(padded, 3), w)
    with pytest.raises(ValueError):
        layout.pad_vocab(w, 2)


TINY = dict(num_layers=2, hidden_size=8, ffn_hidden_size=12, num_attention_heads=4,
            num_query_groups=2, vocab_size=5)
CASES = {
    "LlamaForCausalLM": ModelConfig(**TINY, tie_embeddings=False),
    "Qwen2ForCausalLM": ModelConfig(**TINY, add_qkv_bias=True, tie_embeddings=True),
    "Qwen3ForCausalLM": ModelConfig(**TINY, qk_layernorm=True, kv_channels=4,
                                    tie_embeddings=False),
}


def random_hf_reader(arch: str, seed: int):
    """Random HF tensors of every unit of `arch`'s tiny config, and a sliced reader of them
    (name, dim, start, stop) -> tensor, as the converter's HF readers are called."""
    cfg, mapping = CASES[arch], MAPPINGS[arch]
    gen = torch.Generator().manual_seed(seed)
    hf = {name: torch.randn(shape, generator=gen) for unit in mapping.units(cfg)
          for name, shape in zip(unit.hf_names, hf_shapes(unit, cfg))}

    def read(name, dim, start, stop):
        t = hf[name]
        return t if dim is None else t.narrow(dim, start, stop - start)

    return hf, read


@pytest.mark.parametrize("arch", sorted(CASES))
@pytest.mark.parametrize("tp", [1, 2])
def test_sliced_reads_equal_shards_of_the_full_tensor(arch, tp):
    """A rank reading only its HF rows/columns gets exactly its shard of the full tensor."""
    cfg, mapping = CASES[arch], MAPPINGS[arch]
    hf, read = random_hf_reader(arch, seed=0)
    padded = 8  # vocab 5 -> at TP=2 rank 1 holds rows 4..7: one real row, three zeros
    for unit in mapping.units(cfg):
        full = to_megatron(unit, [hf[n] for n in unit.hf_names], cfg, padded)
        shards = [read_megatron_shard(unit, read, cfg, padded, r, tp) for r in range(tp)]
        for r, shard in enumerate(shards):
            assert torch.equal(shard, layout.tp_shard(unit.tp_split, full, r, tp)), unit
        back = to_hf(unit, layout.tp_gather(unit.tp_split, shards), cfg)
        assert all(torch.equal(a, hf[n]) for a, n in zip(back, unit.hf_names)), unit



@pytest.mark.parametrize("arch", sorted(CASES))
@pytest.mark.parametrize("tp", [1, 2])
def test_shards_written_into_a_given_tensor(arch, tp):
    """``out=``: the shard lands in the given tensor (in its dtype), the same values as a
    returned shard cast to that dtype; a tensor of another shape is refused."""
    cfg, mapping = CASES[arch], MAPPINGS[arch]
    _, read = random_hf_reader(arch, seed=1)
    for unit in mapping.units(cfg):
        for r in range(tp):
            want = read_megatron_shard(unit, read, cfg, 8, r, tp).to(torch.bfloat16)
            out = torch.full(want.shape, float("nan"), dtype=torch.bfloat16)
            assert read_megatron_shard(unit, read, cfg, 8, r, tp, out=out) is out
            assert torch.equal(out, want), unit
            with pytest.raises(ValueError, match="does not fit"):
                read_megatron_shard(unit, read, cfg, 8, r, tp,
                                    out=torch.empty(want.shape[0] + 1, *want.shape[1:]))


def test_unit_names_per_architecture():
    qwen3 = [u for u in MAPPINGS["Qwen3ForCausalLM"].units(CASES["Qwen3ForCausalLM"])
             if u.layer == 1]
    names = {u.hf_names[0]: u for u in qwen3}
    qnorm = names["model.layers.1.self_attn.q_norm.weight"]
    assert qnorm.param_name() == "decoder.layers.1.self_attention.q_layernorm.weight"
    norm = names["model.layers.1.input_layernorm.weight"]
    assert norm.param_name("local", local_layer=0) == "decoder.layers.0.input_layernorm.weight"
    assert (norm.param_name("transformer_engine")
            == "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight")
    assert norm.ckpt_key == "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
    post = names["model.layers.1.post_attention_layernorm.weight"]
    assert post.param_name() == "decoder.layers.1.pre_mlp_layernorm.weight"
    assert post.ckpt_key == "decoder.layers.mlp.linear_fc1.layer_norm_weight"

    qwen2 = MAPPINGS["Qwen2ForCausalLM"].units(CASES["Qwen2ForCausalLM"])
    assert any(u.hf_names[0].endswith("q_proj.bias") for u in qwen2)
    assert not any("lm_head.weight" in u.hf_names for u in qwen2)  # tied
    llama = MAPPINGS["LlamaForCausalLM"].units(CASES["LlamaForCausalLM"])
    assert llama[-1].hf_names == ("lm_head.weight",) and llama[-1].kind == "vocab"
    assert not any("bias" in n or "q_norm" in n for u in llama for n in u.hf_names)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_model_config_round_trips_through_hf_config(arch):
    mapping = MAPPINGS[arch]
    cfg = CASES[arch]
    hf = mapping.hf_config(cfg, dtype="bfloat16")
    assert hf["architectures"] == [arch] and hf["torch_dtype"] == "bfloat16"
    head_dim = {"LlamaForCausalLM": 2, "Qwen2ForCausalLM": None, "Qwen3ForCausalLM": 4}
    assert hf.get("head_dim") == head_dim[arch]
    assert mapping.model_config(hf) == cfg


def test_hf_config_translation_details():
    mapping = get_mapping("Qwen3ForCausalLM")
    hf = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2,
          "intermediate_size": 96, "vocab_size": 250, "rope_theta": 1e6,
          "tie_word_embeddings": True, "max_position_embeddings": 40960}
    cfg = mapping.model_config(hf)
    assert (cfg.kv_channels, cfg.rotary_base, cfg.qk_layernorm, cfg.tie_embeddings,
            cfg.seq_length) == (32, 1e6, True, True, 40960)
    # transformers 5 nests the RoPE base; base keys survive the way back.
    hf5 = {**hf, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}, "eos_token_id": 7}
    del hf5["rope_theta"]
    assert mapping.model_config(hf5).rotary_base == 5e5
    back = mapping.hf_config(mapping.model_config(hf5), base=hf5)
    assert back["rope_parameters"]["rope_theta"] == 5e5 and back["eos_token_id"] == 7
    with pytest.raises(ConversionError, match="attention_bias"):
        mapping.model_config({**hf, "attention_bias": True})
    with pytest.raises(ConversionError, match="lacks 'vocab_size'"):
        mapping.model_config({k: v for k, v in hf.items() if k != "vocab_size"})
    with pytest.raises(ConversionError, match="unsupported architecture 'GPT2LMHeadModel'"):
        get_mapping("GPT2LMHeadModel")
    with pytest.raises(ConversionError, match="needs add_qkv_bias=True"):
        get_mapping("Qwen2ForCausalLM").hf_config(CASES["LlamaForCausalLM"])


def test_plan_shards_groups_consecutive_items():
    assert plan_shards([4, 4, 4, 10, 1], max_bytes=8) == [[0, 1], [2], [3], [4]]
    assert plan_shards([1, 2], max_bytes=100) == [[0, 1]]
    assert plan_shards([], max_bytes=1) == []
