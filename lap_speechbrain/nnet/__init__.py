"""Training objective: sub-center cosine classifier, AAM + Inter-TopK, schedules."""

from lap_speechbrain.nnet.classifier import SubCenterClassifier
from lap_speechbrain.nnet.losses import AdditiveAngularMarginInterTopK
from lap_speechbrain.nnet.schedulers import MarginScheduler, warmup_cosine_schedule

__all__ = [
    "AdditiveAngularMarginInterTopK",
    "MarginScheduler",
    "SubCenterClassifier",
    "warmup_cosine_schedule",
]
