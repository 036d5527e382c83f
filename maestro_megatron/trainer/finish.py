"""The end of a run: export the trained policy and the scalarizer, draw the plots."""

from __future__ import annotations

from pathlib import Path

FINISHED = "FINISHED"
"""Marker written last by a completed run (its content: the number of steps)."""


def finish_run(state) -> Path:
    """After the last step: the trained policy as an HF directory (`hf_final/`, for
    transformers / vLLM), the scalarizer's export (the Conductor's `conductor.pt`),
    the plots, the summary on the console; then the process groups are torn down.
    Returns the run directory."""
    import shutil

    from maestro_megatron.megatron.parallel import destroy_distributed
    from maestro_megatron.trainer.bootstrap import _barrier
    from maestro_megatron.weights.hf_model import export_hf

    run_dir, models, groups = state.run_dir, state.models, state.groups
    out = run_dir / "hf_final"
    if groups.rank == 0 and out.exists():
        shutil.rmtree(out)
    _barrier()
    special = {"bos_token_id": models.tokenizer.bos_token_id,
               "eos_token_id": models.tokenizer.eos_token_id,
               "pad_token_id": models.tokenizer.pad_token_id}
    export_hf(models.policy, models.cfg, groups, out, tokenizer_dir=models.tokenizer_dir,
              base_config=special)
    if state.is_logger:
        from maestro_megatron.trainer.plots import plot_conductor_weights, plot_rewards
        from maestro_megatron.trainer.summary import format_summary

        state.scalarizer.export(run_dir, tuple(state.recipe.rewards.components))
        plot_conductor_weights(run_dir)
        plot_rewards(run_dir)
        print(format_summary(run_dir), flush=True)  # this rank wrote everything it names
    _barrier()
    if groups.rank == 0:  # job scripts never requeue or chain a finished run
        from maestro_megatron.trainer.outputs import atomic_write_text

        atomic_write_text(run_dir / FINISHED, f"{state.recipe.run.num_steps}\n")
    destroy_distributed()
    return run_dir
