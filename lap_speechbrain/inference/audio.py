"""Reading audio files as users have them: any rate, mono or stereo, int or float PCM.

Authors
 * lap-speechbrain contributors 2026
"""

import math
from pathlib import Path
from typing import Union

import soundfile as sf
import torch

from lap_speechbrain.data.audio import check_finite, mix_down, resampler

# The CNN front end of WavLM / wav2vec 2.0 / HuBERT sees 400 samples (25 ms at
# 16 kHz) per output frame: shorter input yields no frame at all.
SSL_RECEPTIVE_FIELD = 400
# Sample rates accepted in a file's header: below 8 kHz no speech band is left,
# and a bogus rate (a 2 KB file claiming 1 Hz) would turn into hours of audio.
SAMPLE_RATE_RANGE = (8000, 384000)
# torchaudio's sinc resampler builds a (new, orig + taps) kernel of the rates
# divided by their gcd: 16000 <-> 44101 Hz would take 2.8 GB; refuse above 64 MB.
MAX_RESAMPLING_KERNEL = 1 << 24


class AudioError(ValueError):
    """An audio file that cannot be used: missing, unreadable or too short."""


def load_audio(
    path: Union[str, Path],
    target_sample_rate: int = 16000,
    min_samples: int = SSL_RECEPTIVE_FIELD,
) -> torch.Tensor:
    """Reads an audio file as a mono float waveform at ``target_sample_rate``.

    Uses soundfile (``torchaudio.load`` needs torchcodec), so it reads what
    libsndfile reads (wav, flac, ogg, ...) with integer or float samples;
    integer PCM is scaled to [-1, 1]. Several channels are averaged and any
    sample rate is resampled.

    Arguments
    ---------
    path : str or Path
        The audio file.
    target_sample_rate : int
        Sample rate of the returned waveform.
    min_samples : int
        Fewest samples (at ``target_sample_rate``) accepted; the default is the
        receptive field of an SSL model's CNN at 16 kHz.

    Returns
    -------
    torch.Tensor
        (N,) float32 waveform.

    Raises
    ------
    AudioError
        Naming the file and the reason: missing, unreadable, a sample rate out
        of ``SAMPLE_RATE_RANGE`` or too costly to resample, or too short.
    NonFiniteError
        Naming the file: it holds NaN or infinite samples.

    Example
    -------
    >>> import os
    >>> import numpy as np
    >>> path = os.path.join(str(getfixture("tmpdir")), "stereo_8k.wav")
    >>> sf.write(path, np.zeros((8000, 2), dtype=np.int16), 8000)
    >>> load_audio(path).shape
    torch.Size([16000])
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        check_sample_rate(sf.info(str(path)).samplerate, target_sample_rate, path)
        samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: cannot be read as audio ({error})") from error
    # The same mono and resampling rule as training's data pipeline.
    waveform = check_finite(torch.from_numpy(mix_down(samples)), path)
    if sample_rate != target_sample_rate:
        waveform = resampler(sample_rate, target_sample_rate)(waveform)
    if waveform.numel() < min_samples:
        raise AudioError(
            f"{path}: too short, {waveform.numel()} samples at {target_sample_rate} Hz "
            f"({waveform.numel() / target_sample_rate:.3f} s); the model needs at least "
            f"{min_samples} samples ({min_samples / target_sample_rate:.3f} s)"
        )
    return waveform


def check_sample_rate(sample_rate: int, target_sample_rate: int, path: Union[str, Path]) -> None:
    """Refuses a header sample rate that is implausible or too costly to resample.

    Arguments
    ---------
    sample_rate : int
        The rate in the file's header.
    target_sample_rate : int
        The rate it is resampled to.
    path : str or Path
        The file, for the message.

    Raises
    ------
    AudioError
        Naming the file and its rate.

    Example
    -------
    >>> check_sample_rate(44100, 16000, "a.wav")
    >>> check_sample_rate(1, 16000, "bad.wav")
    Traceback (most recent call last):
    ...
    lap_speechbrain.inference.audio.AudioError: bad.wav: sample rate 1 Hz in its header; expected 8000 to 384000 Hz
    """
    low, high = SAMPLE_RATE_RANGE
    if not low <= sample_rate <= high:
        raise AudioError(f"{path}: sample rate {sample_rate} Hz in its header; expected {low} to {high} Hz")
    divisor = math.gcd(sample_rate, target_sample_rate)
    orig, new = sample_rate // divisor, target_sample_rate // divisor
    taps = 2 * math.ceil(6 * orig / (0.99 * min(orig, new)))  # torchaudio's default filter width
    if new * (orig + taps) > MAX_RESAMPLING_KERNEL:
        raise AudioError(
            f"{path}: resampling its unusual sample rate {sample_rate} Hz to {target_sample_rate} Hz "
            f"would need a {4 * new * (orig + taps) / 1e9:.1f} GB filter; convert it to a common rate "
            f"first (e.g. sox in.wav -r {target_sample_rate} out.wav)"
        )
