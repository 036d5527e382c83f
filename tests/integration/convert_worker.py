"""torchrun worker: convert HF -> megatron under TP x PP ranks, and/or compare logits.

``--convert HF_DIR:OUT_DIR ...``: run ``hf-to-megatron --tp TP --pp PP`` through the
converter's CLI in this process group (the distributed save path). ``--check
NAME:CKPT:REF ...``: load each checkpoint into ``build_model`` at TP x PP, run a
pipeline forward on the tokens in REF, gather the logits over TP, and write the max
|logit difference| against REF's HF logits to ``--out`` (JSON, by NAME). With
``--gather-dir``, also gather the live shards into HF tensors (the refit path) and save
them there as NAME.safetensors.

``--training-run RUN_DIR``: (one process) a run directory as ``maestro train`` leaves it
at a checkpoint, made by the trainer's own functions from ``recipes/tiny_cpu.yaml`` plus
``--recipe-override`` items: ``recipe.yaml``, ``tokenizer/``, ``checkpoints/step_00000001``
(policy after a short warm-up, optimizer state) and ``trainer.pt``, the trainer's
log-probs of fixed tokens computed by megatron-core from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from maestro_megatron.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from maestro_megatron.megatron.model import build_model
from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
from maestro_megatron.weights.cli import main as convert_main
from maestro_megatron.weights.convert import read_meta
from maestro_megatron.weights.gather import is_refit_leader, iter_hf_weights
from maestro_megatron.weights.model_io import load_megatron_checkpoint
from maestro_megatron.weights.registry import get_mapping


def pipeline_logits(chunks, tokens: torch.Tensor, groups) -> torch.Tensor | None:
    """Full-vocabulary logits [B, S, Vp] on the last stage (None elsewhere)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batch, seq = tokens.shape

    def gather(output):
        parts = [torch.empty_like(output) for _ in range(groups.tp_size)]
        dist.all_gather(parts, output.contiguous(), group=groups.tp)
        return output.new_zeros(()), {"logits": torch.cat(parts, dim=-1)}

    def step(data_iterator, model):
        tok = next(data_iterator)
        return model(tok, torch.arange(seq).expand_as(tok), None), gather

    with torch.no_grad():
        results = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([tokens]), model=chunks[0],
            num_microbatches=1, seq_length=seq, micro_batch_size=batch, forward_only=True)
    return results[0]["logits"] if groups.is_last_stage else None


def training_run(run_dir: Path, overrides: list[str]) -> None:
    """See the module docstring (``--training-run``)."""
    import yaml

    from maestro_megatron.config import load_recipe, recipe_to_dict
    from maestro_megatron.data.packing import pack_sequences
    from maestro_megatron.megatron.forward import forward_logprobs
    from maestro_megatron.megatron.optimizer import build_optimizer, ensure_optimizer_state
    from maestro_megatron.trainer.bootstrap import prepare_models
    from maestro_megatron.trainer.checkpoint import load_checkpoint, save_checkpoint

    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "recipes" / "tiny_cpu.yaml",
                         ["warmup.num_steps=3", f"run.output_dir={run_dir}", *overrides])
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe)))
    groups = init_distributed(recipe.parallel, recipe.model, seed=recipe.run.seed)
    models = prepare_models(recipe, run_dir, groups)
    optimizer, scheduler = build_optimizer(recipe.grpo, recipe.parallel, recipe.precision,
                                           models.policy, recipe.run.num_steps)
    ensure_optimizer_state(optimizer)  # the optimizer's keys are in a real checkpoint
    save_checkpoint(run_dir / "checkpoints", 1, model_chunks=models.policy,
                    optimizer=optimizer, scheduler=scheduler, groups=groups, scalarizer=None,
                    extra={})
    chunks = build_model(models.cfg, recipe.parallel, recipe.precision, pp_rank=0, pp_size=1,
                         freeze=True)
    load_checkpoint(run_dir / "checkpoints", model_chunks=chunks, optimizer=None,
                    scheduler=None, groups=groups, scalarizer=None, load_rng=False)
    tok = models.tokenizer
    prompts = [tok("What is 12 + 7?\n")["input_ids"], tok("Tell a story.\n")["input_ids"]]
    responses = [tok("<think>12 + 7 = 19</think><answer>19</answer>",
                     add_special_tokens=False)["input_ids"],
                 tok("<think>a cat</think><answer>A cat slept.</answer>",
                     add_special_tokens=False)["input_ids"]]
    batch = pack_sequences(prompts, responses, tok.pad_token_id, models.cfg.seq_length)
    result = forward_logprobs(chunks, batch, groups, micro_batch_size=1,
                              vocab_size=models.cfg.vocab_size)
    torch.save({"tokens": batch.tokens, "mask": batch.response_mask,
                "logprobs": result.logprobs, "vocab_size": models.cfg.vocab_size},
               run_dir / "trainer.pt")
    destroy_distributed()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--training-run", type=Path, default=None)
    parser.add_argument("--recipe-override", nargs="*", default=[])
    parser.add_argument("--convert", nargs="*", default=[])
    parser.add_argument("--check", nargs="*", default=[])
    parser.add_argument("--vocab-multiple", default="128")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--gather-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.training_run is not None:
        training_run(args.training_run, args.recipe_override)
        return
    parallel = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    groups = init_distributed(parallel, ModelConfig(num_layers=4))
    for pair in args.convert:
        hf_dir, out = pair.split(":")
        rc = convert_main(["hf-to-megatron", "--hf", hf_dir, "--out", out, "--tp",
                           str(args.tp), "--pp", str(args.pp), "--no-progress",
                           "--make-vocab-size-divisible-by", args.vocab_multiple])
        assert rc == 0, f"conversion of {hf_dir} failed with {rc}"
    diffs = {}
    for item in args.check:
        name, ckpt, ref_path = item.split(":")
        _, cfg, _ = read_meta(Path(ckpt))
        chunks = build_model(cfg, parallel, PrecisionConfig(transformer_impl="local"),
                             pp_rank=groups.pp_rank, pp_size=groups.pp_size, freeze=True)
        load_megatron_checkpoint(chunks, Path(ckpt))
        if args.gather_dir is not None:  # the refit path: live shards -> HF tensors
            meta = json.loads((Path(ckpt) / "maestro_weights.json").read_text())
            tensors = dict(iter_hf_weights(chunks, get_mapping(meta["architecture"]), cfg,
                                           groups))
            if is_refit_leader(groups):
                save_file({k: v.contiguous() for k, v in tensors.items()},
                          str(args.gather_dir / f"{name}.safetensors"))
        ref = torch.load(ref_path)
        logits = pipeline_logits(chunks, ref["tokens"], groups)
        if logits is not None:
            padding = logits[..., cfg.vocab_size:]
            diffs[name] = {
                "max_abs_diff": (logits[..., :cfg.vocab_size] - ref["logits"]).abs().max().item(),
                "padding_rows_zero": bool((padding == 0).all()),
            }
    if args.check and groups.is_last_stage and groups.tp_rank == 0 and groups.dp_rank == 0:
        args.out.write_text(json.dumps(diffs, indent=2))
    destroy_distributed()


if __name__ == "__main__":
    main()
