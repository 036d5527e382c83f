"""Refit packing and verification without an engine (torch + safetensors only)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from maestro_megatron.config.schema import RolloutConfig
from maestro_megatron.rollout import SamplingConfig, iter_buckets, refit_engine, verify_refit
from maestro_megatron.rollout.refit import deserialize_bucket, group_key, serialize_bucket
from maestro_megatron.rollout.vllm_engine import prompt_seed


def _stream():
    """embed (400 B), two layers of 3 x 80 B each, final norm (40 B), head (400 B)."""
    yield "model.embed_tokens.weight", torch.zeros(100)
    for i in range(2):
        for part in ("q_proj", "k_proj", "v_proj"):
            yield f"model.layers.{i}.self_attn.{part}.weight", torch.full((20,), float(i))
    yield "model.norm.weight", torch.ones(10)
    yield "lm_head.weight", torch.zeros(100)


def test_group_key():
    assert group_key("model.layers.12.mlp.up_proj.weight") == "model.layers.12"
    assert group_key("model.language_model.layers.3.x") == "model.language_model.layers.3"
    assert group_key("lm_head.weight") == "lm_head.weight"


def test_buckets_respect_limit_and_never_split_a_layer():
    buckets = list(iter_buckets(_stream(), bucket_bytes=500))
    names = [[n for n, _ in b] for b in buckets]
    # 400 | 240 + 240 = 480 | 40 + 400 = 440: greedy in stream order
    assert [len(b) for b in names] == [1, 6, 2]
    assert [n for b in names for n in b] == [n for n, _ in _stream()]
    home = {}
    for i, b in enumerate(names):
        for n in b:
            assert home.setdefault(group_key(n), i) == i, f"{group_key(n)} split over buckets"


def test_oversized_group_gets_its_own_bucket():
    buckets = list(iter_buckets(_stream(), bucket_bytes=100))
    sizes = [sum(t.numel() * 4 for _, t in b) for b in buckets]
    assert sizes == [400, 240, 240, 40, 400]


def test_non_contiguous_layer_is_rejected():
    stream = [("model.layers.0.a", torch.zeros(1)), ("model.layers.1.a", torch.zeros(1)),
              ("model.layers.0.b", torch.zeros(1))]
    with pytest.raises(ValueError, match="model.layers.0"):
        list(iter_buckets(stream, bucket_bytes=1 << 20))


def test_serialize_roundtrip_with_tied_and_strided_tensors():
    emb = torch.arange(12.0).reshape(3, 4)
    bucket = [("embed", emb), ("head", emb), ("t", emb.t()), ("bf", emb.to(torch.bfloat16))]
    out = deserialize_bucket(serialize_bucket(bucket))
    assert set(out) == {"embed", "head", "t", "bf"}
    for name, t in bucket:
        assert out[name].dtype == t.dtype and torch.equal(out[name], t)


class FakeEngine:
    """Records buckets; scores sequences with fixed numbers."""

    def __init__(self):
        self.blobs, self.finished = [], 0

    def load_serialized_bucket(self, blob):
        self.blobs.append(deserialize_bucket(blob))
        return len(self.blobs[-1])

    def finish_refit(self):
        self.finished += 1

    def score_sequences(self, token_ids, prompt_lens):
        return [torch.full((len(ids) - p,), -1.0) for ids, p in zip(token_ids, prompt_lens)]


def test_refit_engine_stats_and_single_finish():
    eng = FakeEngine()
    stats = refit_engine(eng, _stream(), bucket_bytes=500)
    assert (stats.num_tensors, stats.num_buckets, stats.num_bytes) == (9, 3, 1320)
    assert stats.max_bucket_bytes == 480 and eng.finished == 1
    assert torch.equal(eng.blobs[1]["model.layers.1.self_attn.v_proj.weight"], torch.ones(20))
    assert set(stats.metrics()) == {"refit/num_tensors", "refit/num_buckets", "refit/bytes",
                                    "timing/refit"}


def test_verify_refit_returns_max_abs_diff():
    def trainer(token_ids, prompt_lens):
        out = [torch.full((len(ids) - p,), -1.0) for ids, p in zip(token_ids, prompt_lens)]
        out[1][2] = -1.25
        return out

    assert verify_refit(FakeEngine(), trainer, [[1, 2, 3], [4, 5, 6, 7, 8]], [1, 2]) == 0.25
    with pytest.raises(ValueError, match="sequence 0"):
        verify_refit(FakeEngine(), lambda t, p: [torch.zeros(5)], [[1, 2, 3]], [1])


def test_sampling_config_from_recipe():
    cfg = SamplingConfig.from_rollout(RolloutConfig(temperature=0.7, top_p=0.9,
                                                    max_new_tokens=33), seed=5)
    assert cfg == SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=33, seed=5)


def test_prompt_seeds_are_distinct_and_stable():
    seeds = {prompt_seed(s, i) for s in range(50) for i in range(64)}
    assert len(seeds) == 50 * 64
    assert prompt_seed(7, 3) == prompt_seed(7, 3) and 0 <= prompt_seed(7, 3) < 2**30


def test_importing_rollout_does_not_import_vllm():
    code = ("import sys, maestro_megatron.rollout; "
            "sys.exit(1 if any(m.split('.')[0] == 'vllm' for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
