"""Loading exported models: audio reading, the model's modules, LAPSpeakerRecognition, attention plots.

``load_encoder`` loads an exported folder, a training output folder (its
``model/``) or a hub id; ``LAPSpeakerRecognition`` is SpeechBrain's
``SpeakerRecognition`` deciding with the threshold stored at export. Writing
exported folders is :mod:`lap_speechbrain.export`'s job.
"""

from lap_speechbrain.inference.audio import AudioError, load_audio
from lap_speechbrain.inference.interfaces import LAPSpeakerRecognition, load_encoder

__all__ = ["AudioError", "LAPSpeakerRecognition", "load_audio", "load_encoder"]
