"""Training: the loop, checkpoints, preemption handling and experiment tracking."""
