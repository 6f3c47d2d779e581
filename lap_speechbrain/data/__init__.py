"""Data: manifests, VoxCeleb, custom corpora, noise/RIR CSVs, trial lists, audio reading and pipelines.

Authors
 * lap-speechbrain contributors 2026
"""

from lap_speechbrain.data.custom import prepare_custom_corpus
from lap_speechbrain.data.manifest import (
    read_csv,
    scan_audio,
    speaker_encoder,
    write_csv,
)
from lap_speechbrain.data.noise import prepare_noise_csvs
from lap_speechbrain.data.voxceleb import prepare_voxceleb

__all__ = [
    "prepare_custom_corpus",
    "prepare_noise_csvs",
    "prepare_voxceleb",
    "read_csv",
    "scan_audio",
    "speaker_encoder",
    "write_csv",
]
