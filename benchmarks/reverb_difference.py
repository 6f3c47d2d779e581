#!/usr/bin/env python3
"""Benchmark: how SpeechBrain's ``AddReverb`` differs from the reference's reverberation.

The reference convolves each utterance with a unit-energy RIR and keeps the
first N samples (``lap_speechbrain.augment.ConvolveRIR``). SpeechBrain's
``AddReverb`` (through ``speechbrain.processing.signal_processing.reverberate``)
shifts the output back by the RIR's direct-path delay and rescales it to the
clean signal's mean absolute amplitude. On simulated rooms (the demo's
image-source + late-tail RIRs) and synthetic speech (espeak-ng), this prints,
per RIR, the direct-path delay that SpeechBrain removes, the level of each
output against the clean speech, and how close SpeechBrain's output is to the
reference's once that delay and that gain are undone (the SNR of the rest).

    python benchmarks/reverb_difference.py --rooms 6 --utterances 4

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import statistics

import numpy as np
import torch
from speechbrain.processing.signal_processing import reverberate

from lap_speechbrain.demo.synthetic_effects import room_impulse_response, sample_room
from lap_speechbrain.demo.synthetic_speech import sample_speakers, speak_duration

RATE = 16000


def reference_reverb(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """What the reference does: convolution with the unit-energy RIR, first N samples."""
    return np.convolve(speech, rir / np.sqrt(np.sum(rir**2)))[: len(speech)]


def level_db(signal: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(signal**2) / np.mean(clean**2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=6)
    parser.add_argument("--utterances", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    speech = [speak_duration(speaker, args.seconds, rng)[0].astype(np.float64)
              for speaker in sample_speakers(rng, args.utterances)]
    print("room  RT60 s  delay ms  reference dB  SpeechBrain dB  SB vs reference after undoing delay+gain (SNR dB)")
    summary = {"delay": [], "reference": [], "speechbrain": [], "residual": []}
    for index in range(args.rooms):
        room = sample_room(rng)
        rir = room_impulse_response(room, rng).astype(np.float64)
        delay = int(np.argmax(np.abs(rir)))
        rows = []
        for clean in speech:
            ours = reference_reverb(clean, rir)
            theirs = reverberate(torch.from_numpy(clean)[None], torch.from_numpy(rir)).squeeze(0).numpy()
            # Undo SpeechBrain's shift, then fit the gain on the overlap.
            overlap = len(clean) - delay
            shifted, target = theirs[:overlap], ours[delay:]
            gain = float(np.dot(shifted, target) / np.dot(shifted, shifted))
            residual = target - gain * shifted
            rows.append((level_db(ours, clean), level_db(theirs, clean),
                         float(10 * np.log10(np.sum(target**2) / np.sum(residual**2)))))
        reference, speechbrain, snr = (statistics.median(column) for column in zip(*rows))
        print(f"{index:4d}  {room.rt60:6.2f}  {1000 * delay / RATE:8.1f}  {reference:12.1f}  {speechbrain:14.1f}"
              f"  {snr:10.1f}")
        for key, value in zip(summary, (1000 * delay / RATE, reference, speechbrain, snr)):
            summary[key].append(value)
    print("median over rooms: " + ", ".join(f"{key} {statistics.median(values):.1f}"
                                            for key, values in summary.items()))


if __name__ == "__main__":
    main()
