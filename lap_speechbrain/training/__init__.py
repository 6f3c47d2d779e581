"""Training support: crash-safe checkpoints and the stage runner."""
