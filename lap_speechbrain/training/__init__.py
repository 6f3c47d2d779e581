"""Training support for recipes: crash-safe checkpoints, stage bookkeeping, override checks.

Every function takes explicit arguments; the training recipe
(``recipes/train_speaker_embeddings.py``) owns the yaml and calls them.
"""
