"""The MAESTRO training run: start-up, rollouts, the step loop, run outputs, checkpoints."""
