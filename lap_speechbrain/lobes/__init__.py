"""Neural building blocks: LAP, the LAP+ASTP backend and the SSL speaker encoder."""

from lap_speechbrain.lobes.backend import LAPSpeakerBackend
from lap_speechbrain.lobes.lap import LayerAttentivePooling
from lap_speechbrain.lobes.layer_sum import WeightedLayerSum
from lap_speechbrain.lobes.pooling import ReferenceAttentiveStatisticsPooling
from lap_speechbrain.lobes.ssl_encoder import SSLSpeakerEncoder

__all__ = [
    "LAPSpeakerBackend",
    "LayerAttentivePooling",
    "ReferenceAttentiveStatisticsPooling",
    "SSLSpeakerEncoder",
    "WeightedLayerSum",
]
