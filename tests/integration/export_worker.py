"""One process: the trainer's own logprobs of fixed tokens, from a run's last
checkpoint (torch_dist) through megatron-core, for comparison with `hf_final/`.

    python export_worker.py RUN_DIR OUT.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(run_dir: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    from maestro_megatron.config import load_recipe
    from maestro_megatron.data.packing import pack_sequences
    from maestro_megatron.megatron.forward import forward_logprobs
    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.trainer.checkpoint import load_checkpoint
    from maestro_megatron.weights.hf_model import hf_model_config

    recipe = load_recipe(run_dir / "recipe.yaml")
    cfg, _ = hf_model_config(run_dir / "hf_final", base=recipe.model)
    groups = init_distributed(recipe.parallel, cfg, seed=0)
    chunks = build_model(cfg, recipe.parallel, recipe.precision, pp_rank=0, pp_size=1,
                         freeze=True)
    load_checkpoint(run_dir / "checkpoints", model_chunks=chunks, optimizer=None,
                    scheduler=None, groups=groups, scalarizer=None, load_rng=False)
    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    prompts = [tok("What is 12 + 7?\n")["input_ids"], tok("Tell a story.\n")["input_ids"]]
    responses = [tok("<think>12 + 7 = 19</think><answer>19</answer>",
                     add_special_tokens=False)["input_ids"],
                 tok("<think>a cat</think><answer>A cat slept.</answer>",
                     add_special_tokens=False)["input_ids"]]
    batch = pack_sequences(prompts, responses, tok.pad_token_id, cfg.seq_length)
    result = forward_logprobs(chunks, batch, groups, micro_batch_size=1,
                              vocab_size=cfg.vocab_size)
    torch.save({"tokens": batch.tokens, "mask": batch.response_mask,
                "logprobs": result.logprobs}, out)
    destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
