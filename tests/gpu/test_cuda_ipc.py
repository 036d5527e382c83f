"""GPU only: `rollout/cuda_ipc.py` between two real processes, without vLLM: a bucket
written into the trainer-side buffer reads back bit for bit in another process from its
plain-value export, two buckets reuse one buffer, and once the consumer let go the
producer's memory is freed. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _consumer(requests, replies) -> None:
    from maestro_megatron.rollout.cuda_ipc import open_ipc_bucket

    torch.cuda.set_device(0)
    while (request := requests.get()) is not None:
        exports, layout = request
        tensors = open_ipc_bucket(exports, layout, 0, 0)
        replies.put({name: t.cpu().clone() for name, t in tensors.items()})
        torch.cuda.current_stream().synchronize()
        del tensors  # released: one release per export


def _bucket(seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [("a.weight", torch.randn(33, 7, device="cuda", generator=g)),
            ("b.bias", torch.randn(5, device="cuda", generator=g).to(torch.bfloat16)),
            ("c.weight", torch.randn(64, 3, device="cuda", generator=g).t())]  # strided


def test_bucket_by_cuda_ipc_reads_back_exactly_and_frees_the_buffer():
    from maestro_megatron.rollout.cuda_ipc import CudaIpcBucketBuffer

    ctx = mp.get_context("spawn")
    requests, replies = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_consumer, args=(requests, replies))
    child.start()
    try:
        buckets = [_bucket(0), _bucket(1)]
        allocated = torch.cuda.memory_allocated()
        buffer = CudaIpcBucketBuffer(torch.device("cuda", 0))
        capacities = []
        for bucket in buckets:
            layout = buffer.write(bucket)
            capacities.append(buffer.capacity)
            requests.put((buffer.exports(1), layout))
            got = replies.get(timeout=120)
            assert sorted(got) == sorted(n for n, _ in bucket)
            for name, t in bucket:
                assert got[name].dtype == t.dtype and got[name].shape == t.shape
                assert torch.equal(got[name], t.cpu()), name
        assert capacities[0] == capacities[1] > 0  # the second bucket reused the buffer
        requests.put(None)
        child.join(timeout=60)
        assert child.exitcode == 0
        buffer.close()
        assert torch.cuda.memory_allocated() == allocated
    finally:
        if child.is_alive():
            child.kill()
