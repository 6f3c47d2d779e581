"""Inference with exported models, export for the Hugging Face Hub, LAP attention plots.

``load_encoder`` loads an exported folder, a hub id or a training output
folder; ``LAPSpeakerRecognition`` is SpeechBrain's ``SpeakerRecognition``
deciding with the threshold calibrated at export. The export, Hub upload and
plotting live in :mod:`.export`, :mod:`.hub` and :mod:`.plots`.
"""

from lap_speechbrain.inference.audio import AudioError, load_audio
from lap_speechbrain.inference.interfaces import LAPSpeakerRecognition, load_encoder

__all__ = ["AudioError", "LAPSpeakerRecognition", "load_audio", "load_encoder"]
