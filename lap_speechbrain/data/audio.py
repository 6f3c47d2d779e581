"""Reading audio as the models see it: mono, at the model's sample rate, finite.

Training crops, validation utterances and inference all read files with one
rule: several channels are averaged (:func:`mix_down`) and another sample
rate is resampled by torchaudio's sinc interpolation (:func:`resampler`).
Only the frames needed are decoded, so a 2 s crop of an hour-long file reads
2 s.

Authors
 * lap-speechbrain contributors 2026
"""

import functools
import math
import random
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile
import torch
import torchaudio


def mix_down(samples: np.ndarray) -> np.ndarray:
    """Averages the channels: the one mono rule of training and inference.

    Arguments
    ---------
    samples : numpy.ndarray
        (frames, channels) audio.

    Returns
    -------
    numpy.ndarray
        (frames,) float32, the mean over the channels.

    Example
    -------
    >>> mix_down(np.array([[1.0, 0.0], [0.5, 0.5]])).tolist()
    [0.5, 0.5]
    """
    channels = samples.shape[1]
    if channels == 1:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    # A product with equal weights: 20x faster than samples.mean(axis=1) on (frames, 2) here.
    return samples.astype(np.float32, copy=False) @ np.full(channels, 1 / channels, dtype=np.float32)


@functools.lru_cache(maxsize=None)
def resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    """torchaudio's resampler between two rates, built once per pair.

    ``torchaudio.functional.resample`` computes its sinc kernel on every
    call; the transform keeps it (a 0.5 s crop at 44.1 kHz: 0.15 s against
    0.02 s here).

    Example
    -------
    >>> resampler(8000, 16000)(torch.zeros(8000)).shape
    torch.Size([16000])
    """
    return torchaudio.transforms.Resample(orig_freq, new_freq)


class NonFiniteError(ValueError):
    """Audio samples (or an embedding) are NaN or infinite; the message names the file or rows."""


def check_finite(waveform: torch.Tensor, source: Union[str, Path], what: str = "samples") -> torch.Tensor:
    """Returns ``waveform`` if every sample is finite; the one NaN/inf check of every entry point.

    A NaN or infinite sample poisons a whole embedding (a Base-type WavLM
    normalises its first CNN layer over the whole utterance), and an
    embedding of NaN gives a NaN score that compares false with every
    threshold: a silent "different speakers". So every way audio enters the
    package (training and evaluation loading, ``load_audio``, ``encode_batch``)
    calls this.

    Arguments
    ---------
    waveform : torch.Tensor
        (N,) waveform of one file, or (B, N) batch.
    source : str or Path
        What it came from, for the message: the file, or the function that
        received the batch.
    what : str
        What the values are, for the message (``"values"`` for embeddings or scores).

    Returns
    -------
    torch.Tensor
        ``waveform``.

    Raises
    ------
    NonFiniteError
        Naming ``source`` and the number of bad samples, or for a batch the rows.

    Example
    -------
    >>> check_finite(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), "encode_batch")
    Traceback (most recent call last):
    ...
    lap_speechbrain.data.audio.NonFiniteError: encode_batch: row [1] of the batch holds NaN or infinite samples
    """
    finite = torch.isfinite(waveform)
    if bool(finite.all()):
        return waveform
    if waveform.ndim == 2:
        rows = (~finite.all(dim=1)).nonzero()[:, 0].tolist()
        raise NonFiniteError(
            f"{source}: row{'s' if len(rows) > 1 else ''} {rows} of the batch hold{'' if len(rows) > 1 else 's'} "
            f"NaN or infinite {what}"
        )
    bad = int((~finite).sum())
    raise NonFiniteError(f"{source}: {bad} of {waveform.numel()} {what} are NaN or infinite")


def read_audio(
    path: Union[str, Path],
    sample_rate: int,
    num_samples: Optional[int] = None,
    random_start: bool = False,
) -> torch.Tensor:
    """Reads a file, or ``num_samples`` of it, as mono float32 at ``sample_rate``.

    Only the frames that give ``num_samples`` at ``sample_rate`` are decoded
    (more or fewer frames for a file at another rate), from the start or
    from a random frame. A file shorter than that is read whole.

    Arguments
    ---------
    path : str or Path
        An audio file libsndfile reads (wav, flac, ogg, ...; any sample rate,
        any number of channels, integer or float samples).
    sample_rate : int
        Sample rate of the returned signal.
    num_samples : int, optional
        Samples wanted (at ``sample_rate``); None reads the whole file.
    random_start : bool
        Start at a uniformly drawn frame (``random`` module) instead of at 0.

    Returns
    -------
    torch.Tensor
        (N,) float32 with N <= ``num_samples``: channels averaged
        (:func:`mix_down`), resampled to ``sample_rate`` (:func:`resampler`).

    Raises
    ------
    ValueError
        Naming the file: it cannot be read, or (:class:`NonFiniteError`) holds
        NaN or inf samples.

    Example
    -------
    >>> path = Path(str(getfixture("tmpdir"))) / "stereo_8k.wav"
    >>> soundfile.write(path, np.zeros((8000, 2), dtype=np.int16), 8000)
    >>> read_audio(path, 16000).shape, read_audio(path, 16000, num_samples=4000).shape
    (torch.Size([16000]), torch.Size([4000]))
    """
    # soundfile.SoundFile rather than speechbrain.dataio.audio_io: the frame range
    # depends on the file's own rate, which the open file gives; audio_io would
    # need audio_io.info first, a second open (2.3x the time of a 2 s crop here).
    try:
        with soundfile.SoundFile(str(path)) as file:
            rate, frames = file.samplerate, file.frames
            needed = frames if num_samples is None else min(frames, math.ceil(num_samples * rate / sample_rate))
            if random_start and frames > needed:
                file.seek(random.randint(0, frames - needed))
            samples = file.read(needed, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"{path}: cannot read audio ({error})") from error
    signal = check_finite(torch.from_numpy(mix_down(samples)), path)
    if rate != sample_rate:
        with torch.no_grad():
            signal = resampler(rate, sample_rate)(signal)
    return signal if num_samples is None else signal[:num_samples]
