"""Packaging trained models: the exported folder, its model card, Hub upload, reference checkpoints.

:func:`~lap_speechbrain.export.folder.export_model` writes the folder that
``EncoderClassifier.from_hparams`` loads (training ends by writing one as
``<output_folder>/model``); its ``hyperparams.yaml`` is built from the
package's ``inference.yaml`` template, and its ``lap_export.json`` marker
identifies it as an export, the only kind of folder an export may replace.
"""
