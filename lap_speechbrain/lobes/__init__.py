"""Neural building blocks: LAP, the backends the paper compares and the SSL speaker encoder."""

from lap_speechbrain.lobes.backend import ASTPBackend, LAPSpeakerBackend, SpeakerBackend, build_backend
from lap_speechbrain.lobes.lap import LayerAttentivePooling
from lap_speechbrain.lobes.layer_sum import WeightedLayerSum
from lap_speechbrain.lobes.networks import ECAPATDNNNetwork, MHFABackend, XvectorNetwork
from lap_speechbrain.lobes.pooling import ReferenceAttentiveStatisticsPooling
from lap_speechbrain.lobes.ssl_encoder import SSLSpeakerEncoder

__all__ = [
    "ASTPBackend",
    "ECAPATDNNNetwork",
    "LAPSpeakerBackend",
    "MHFABackend",
    "LayerAttentivePooling",
    "ReferenceAttentiveStatisticsPooling",
    "SSLSpeakerEncoder",
    "SpeakerBackend",
    "WeightedLayerSum",
    "XvectorNetwork",
    "build_backend",
]
