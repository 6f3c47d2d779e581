"""Packaging trained models: the exported folder, its model card, Hub upload, reference checkpoints.

:func:`~lap_speechbrain.export.folder.export_model` writes the folder that
``EncoderClassifier.from_hparams`` loads; its ``hyperparams.yaml`` is built from
the package's ``inference.yaml`` template.
"""
