"""Training: models and their layer contract, freezing, the trainer, Alice, checkpoints."""
