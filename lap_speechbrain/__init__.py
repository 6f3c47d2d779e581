"""lap-speechbrain: Layer Attentive Pooling (LAP) speaker verification on SpeechBrain.

The library behind ``recipes/``: SpeechBrain lobes (:mod:`.lobes`), losses and
schedules (:mod:`.nnet`), batch augmentation (:mod:`.augment`), data preparation
(:mod:`.data`), training helpers (:mod:`.training`), scoring (:mod:`.scoring`),
loading trained models (:mod:`.inference`), packaging them for the Hugging Face
Hub (:mod:`.export`) and the ``lap-speechbrain`` command (:mod:`.cli`). The
offline demo's scaffolding lives in :mod:`.demo`, which no other module imports.
"""

__version__ = "0.2.0"
