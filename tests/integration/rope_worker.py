"""One-process worker: the trainer's log-probs of fixed tokens from an HF directory, with
the model config the trainer derives from it (`scaled`) and with its RoPE scaling dropped
(`unscaled`, the trainer before llama3 scaling was represented).

python rope_worker.py --hf DIR --seq-length S --out FILE.pt -> {"tokens" [B, S],
"mask" [B, S], "scaled" [B, S], "unscaled" [B, S], "rope_scaling": dict | None}
(position t scores token t, as `tests.support.logprobs.max_logprob_gap` expects).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path

import torch


def main() -> None:
    from maestro_megatron.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
    from maestro_megatron.data.packing import SequenceBatch
    from maestro_megatron.megatron.forward import forward_logprobs
    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.weights.hf_model import hf_model_config, load_hf_weights

    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--seq-length", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    # The training path: architecture from config.json, seq_length from the recipe.
    recipe = ModelConfig(seq_length=args.seq_length, hf_path=str(args.hf))
    cfg, _ = hf_model_config(args.hf, base=recipe)
    parallel = ParallelConfig()
    groups = init_distributed(parallel, cfg, seed=0)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, cfg.vocab_size, (2, args.seq_length), generator=gen)
    mask = torch.ones(2, args.seq_length)
    mask[:, 0] = 0  # position 0 scores nothing
    batch = SequenceBatch(tokens=tokens, response_mask=mask)
    result = {"tokens": tokens, "mask": mask,
              "rope_scaling": None if cfg.rope_scaling is None else asdict(cfg.rope_scaling)}
    for name, model_cfg in (("scaled", cfg), ("unscaled", replace(cfg, rope_scaling=None))):
        chunks = build_model(model_cfg, parallel, PrecisionConfig(transformer_impl="local"),
                             pp_rank=0, pp_size=1, freeze=True)
        load_hf_weights(chunks, args.hf, model_cfg, groups)
        out = forward_logprobs(chunks, batch, groups, micro_batch_size=2,
                               vocab_size=model_cfg.vocab_size)
        result[name] = out.logprobs.detach().float().cpu()
    torch.save(result, args.out)
    destroy_distributed()


if __name__ == "__main__":
    main()
