"""Refit packing and verification without an engine (torch + safetensors only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from maestro_megatron.config.schema import RolloutConfig
from maestro_megatron.rollout import (
    RolloutEngine,
    SamplingConfig,
    iter_buckets,
    refit_engine,
    verify_refit,
)
from maestro_megatron.rollout.bucket_io import (
    ALIGN,
    SharedBucketBuffer,
    bucket_layout,
    read_shared_bucket,
)
from maestro_megatron.rollout.refit import deserialize_bucket, group_key, serialize_bucket
from maestro_megatron.rollout.vllm_engine import _engine_process_env, prompt_seed
from maestro_megatron.rollout.vllm_logging import CONFIG_ENV, CONFIG_FILE
from maestro_megatron.rollout.vllm_worker import PARTIAL_RELOAD_LOGGERS, _quiet_partial_reload


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


def _mixed_bucket():
    """Tied (same storage twice), strided, bf16, int64, bool, 0-dim and empty tensors."""
    emb = torch.arange(12.0).reshape(3, 4)
    return [("embed", emb), ("head", emb), ("t", emb.t()), ("bf", emb.to(torch.bfloat16)),
            ("idx", torch.arange(5)), ("flag", torch.tensor([True, False, True])),
            ("scalar", torch.tensor(2.5)), ("empty", torch.zeros(0, 4))]


def _assert_exact(out, bucket):
    assert set(out) == {n for n, _ in bucket}
    for name, t in bucket:
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t), name


def test_serialize_roundtrip_with_tied_and_strided_tensors():
    bucket = _mixed_bucket()
    _assert_exact(deserialize_bucket(serialize_bucket(bucket)), bucket)


needs_memfd = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="Linux only")


def test_bucket_layout_aligns_every_tensor():
    layout, end = bucket_layout(_mixed_bucket())
    assert [name for name, *_ in layout] == [n for n, _ in _mixed_bucket()]
    assert all(offset % ALIGN == 0 for *_, offset in layout)
    assert layout[3][1:3] == ("bfloat16", [3, 4]) and layout[6][2] == []
    assert end == layout[-1][3]  # the empty tensor ends where it starts


@needs_memfd
def test_shared_bucket_roundtrip_is_exact():
    buffer = SharedBucketBuffer()
    try:
        bucket = _mixed_bucket()
        out = read_shared_bucket(buffer.path, buffer.write(bucket))
        _assert_exact(out, bucket)
        assert out["embed"].data_ptr() != out["head"].data_ptr()  # tied: own bytes each
    finally:
        buffer.close()


@needs_memfd
def test_shared_bucket_buffer_grows_keeps_and_has_no_name():
    buffer = SharedBucketBuffer()
    try:
        assert os.readlink(buffer.path).startswith("/memfd:maestro-refit")
        big = [("w", torch.randn(600_000))]  # 2.4 MB: grows past the first MiB
        small = [("w", torch.randn(10))]
        buffer.write(small)
        first = buffer.capacity
        layout = buffer.write(big)
        grown = buffer.capacity
        assert first < 2.4e6 <= grown
        _assert_exact(read_shared_bucket(buffer.path, layout), big)
        _assert_exact(read_shared_bucket(buffer.path, buffer.write(small)), small)
        assert buffer.capacity == grown  # kept for the next refit
    finally:
        buffer.close()
    assert buffer.capacity == 0
    with pytest.raises(RuntimeError, match="closed"):
        buffer.write(small)


@needs_memfd
def test_bad_shared_bucket_layout_is_refused():
    buffer = SharedBucketBuffer()
    try:
        (name, dtype, shape, offset), = buffer.write([("w", torch.ones(4))])
        with pytest.raises(ValueError, match="dtype"):
            read_shared_bucket(buffer.path, [(name, "no_such_dtype", shape, offset)])
        with pytest.raises(ValueError, match="past the buffer"):
            read_shared_bucket(buffer.path, [(name, dtype, shape, buffer.capacity)])
    finally:
        buffer.close()


class FakeEngine(RolloutEngine):
    """Records buckets (through the default bytes transport); scores with fixed numbers."""

    def __init__(self):
        self.blobs, self.finished = [], 0

    def generate(self, prompts, n, sampling, first_index=0):
        raise NotImplementedError

    def close(self):
        pass

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


def test_engine_process_env_adds_only_missing_variables_and_restores(monkeypatch):
    monkeypatch.setenv("MAESTRO_TEST_SET", "user")
    monkeypatch.delenv("MAESTRO_TEST_NEW", raising=False)
    with _engine_process_env({"MAESTRO_TEST_SET": "ours", "MAESTRO_TEST_NEW": "ours"}):
        assert os.environ["MAESTRO_TEST_SET"] == "user"
        assert os.environ["MAESTRO_TEST_NEW"] == "ours"
    assert os.environ["MAESTRO_TEST_SET"] == "user" and "MAESTRO_TEST_NEW" not in os.environ


@pytest.mark.parametrize("quiet", [True, False])
def test_partial_reload_warnings_are_muted_only_in_quiet_engines(monkeypatch, quiet):
    import logging

    if quiet:
        monkeypatch.setenv(CONFIG_ENV, str(CONFIG_FILE))
    else:
        monkeypatch.delenv(CONFIG_ENV, raising=False)
    loggers = [logging.getLogger(name) for name in PARTIAL_RELOAD_LOGGERS]
    before = [logger.level for logger in loggers]
    with _quiet_partial_reload():
        assert all(logger.isEnabledFor(logging.WARNING) != quiet for logger in loggers)
        assert all(logger.isEnabledFor(logging.ERROR) for logger in loggers)
    assert [logger.level for logger in loggers] == before
