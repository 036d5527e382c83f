"""Methods mixed into vLLM's worker class (`worker_extension_cls`); they run inside the
engine's worker process(es), never in the trainer.

Called by name through `LLM.collective_rpc("maestro_...", args=...)`: the arguments are
plain bytes/ints, so vLLM's msgpack transport carries them without pickle
(no VLLM_ALLOW_INSECURE_SERIALIZATION needed). No vLLM import here.
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
        return len(tensors)
