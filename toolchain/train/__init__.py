"""Dense training, evaluation, metrics, losses and checkpoints."""
