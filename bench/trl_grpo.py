"""TRL's GRPOTrainer on the tiny configuration; run by bench/against_trl.py with the
TRL environment's Python (bench/setup_trl.sh), never imported by the project.

    bench/.venv-trl/bin/python bench/trl_grpo.py --model DIR --steps 12 --out FILE.json

The same model (the warmed tiny policy), prompts (the built-in train split as plain
text, `prompt + "\\n"`, as our data.prompt_format=plain), N=8 prompts x G=4 responses
per rollout batch, 48 new tokens, one optimizer step per rollout batch (all 32 rows:
steps_per_generation=1), lr 1e-4, beta 0.05, eps 0.2 / 0.28, and the same two rewards
with equal weights: fmt and len (our components' own code). Generation is TRL's default
(transformers `generate` in the training process; its vLLM modes need a GPU server or
colocated GPU engine). Writes the seconds of each step (generation included) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def reward_functions(recipe):
    """fmt and len exactly as our components compute them, as TRL reward callables."""
    from maestro_megatron.rewards import fmt_reward, len_reward

    r = recipe.rewards

    def fmt(completions, **_):
        return fmt_reward(completions, r.fmt.pattern).tolist()

    def length(completions, completion_ids, **_):
        import torch

        lengths = torch.tensor([len(c) for c in completion_ids])
        return len_reward(lengths, r.len.target_tokens, r.len.max_tokens).tolist()

    return [fmt, length]


def dataset():
    from datasets import Dataset

    from maestro_megatron.data.prompts import load_builtin_rows

    rows = load_builtin_rows("train")
    return Dataset.from_dict({"prompt": [r["prompt"] + "\n" for r in rows],
                              "reference": [r.get("reference") or "" for r in rows]})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps (= rollout batches)")
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", default="/tmp/maestro-bench/trl")
    args = p.parse_args()
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from maestro_megatron.config import load_recipe

    recipe = load_recipe(REPO / "recipes" / "tiny_cpu.yaml")
    g = recipe.grpo
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=args.workdir, per_device_train_batch_size=g.group_size * g.num_prompts_per_step,
        steps_per_generation=1,
        num_generations=g.group_size, max_completion_length=recipe.rollout.max_new_tokens,
        learning_rate=g.lr, beta=g.kl_coef, epsilon=g.eps_low, epsilon_high=g.eps_high,
        temperature=recipe.rollout.temperature, num_iterations=1,
        max_steps=args.steps, logging_steps=1, report_to=[],
        save_strategy="no", seed=recipe.run.seed, use_cpu=True, bf16=False,
        dataloader_num_workers=0, lr_scheduler_type="constant", max_grad_norm=g.clip_grad)
    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)

    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(recipe), args=config,
                          train_dataset=dataset(), processing_class=tokenizer,
                          callbacks=[StepTimes()])
    trainer.train()
    Path(args.out).write_text(json.dumps({"trl": trl.__version__, "step_s": times,
                                          "optimizer_steps": len(times),
                                          "torch_threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
