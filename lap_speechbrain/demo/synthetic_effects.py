"""Acoustic degradations for the synthetic corpus: noise, simulated rooms and channels.

Clean synthetic voices are too easy to tell apart (their MFCC means already
separate them), so the corpus passes every utterance through a recording
chain whose parts vary independently of the speaker: a room (impulse
responses simulated with ``pyroomacoustics``), additive noise at a chosen SNR
(white, pink or brown noise, or babble), a per-session channel (a random
smooth equaliser and level, like a different microphone and gain setting)
and, for some utterances, a telephone band-pass.

Authors
 * lap-speechbrain contributors 2026
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq
from scipy.signal import butter, firwin2, oaconvolve, sosfilt

from lap_speechbrain.demo.synthetic_speech import SAMPLE_RATE

NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def coloured_noise(rng: np.random.Generator, num_samples: int, colour: str) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum (white: 0, pink: 1, brown: 2), unit RMS.

    Arguments
    ---------
    rng : np.random.Generator
        Source of randomness.
    num_samples : int
        Length.
    colour : str
        One of ``"white"``, ``"pink"``, ``"brown"``.

    Returns
    -------
    np.ndarray
        (num_samples,) float32.

    Example
    -------
    >>> noise = coloured_noise(np.random.default_rng(0), 16000, "pink")
    >>> noise.shape, round(float(np.sqrt(np.mean(noise ** 2))), 3)
    ((16000,), 1.0)
    """
    if colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}: expected one of {sorted(NOISE_COLOURS)}")
    # Shaped at a length with small prime factors (FFTs of other lengths are slow), then cut.
    length = next_fast_len(max(num_samples, 2), real=True)
    spectrum = rfft(rng.standard_normal(length))
    frequencies = rfftfreq(length)
    frequencies[0] = frequencies[1]  # no infinite gain at DC
    spectrum *= frequencies ** (-NOISE_COLOURS[colour] / 2.0)
    noise = irfft(spectrum, n=length)[:num_samples]
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Adds ``noise`` scaled so that speech power / noise power is ``snr_db`` decibels.

    Arguments
    ---------
    speech : np.ndarray
        (samples,) signal.
    noise : np.ndarray
        (samples,) noise of the same length.
    snr_db : float
        Signal-to-noise ratio in dB (power of the whole utterance, pauses included).

    Returns
    -------
    np.ndarray
        (samples,) float32 mixture.

    Example
    -------
    >>> speech = np.ones(100, dtype=np.float32)
    >>> noisy = add_noise(speech, np.full(100, 0.5, dtype=np.float32), snr_db=20.0)
    >>> round(float(10 * np.log10(1.0 / np.mean((noisy - speech) ** 2))), 3)
    20.0
    """
    speech_power = np.mean(speech.astype(np.float64) ** 2)
    noise_power = np.mean(noise.astype(np.float64) ** 2) + 1e-20
    scale = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (speech + scale * noise).astype(np.float32)


@dataclass(frozen=True)
class Room:
    """A shoebox room with one source and one microphone.

    Arguments
    ---------
    size : tuple of float
        Length, width, height in metres.
    rt60 : float
        Target reverberation time in seconds.
    source : tuple of float
        Talker position (metres).
    microphone : tuple of float
        Microphone position (metres).
    """

    size: Tuple[float, float, float]
    rt60: float
    source: Tuple[float, float, float]
    microphone: Tuple[float, float, float]


# Room draws: sizes from a small office to a lecture room, reverberation from
# a furnished room to a bare hall, talker and microphone at least this far apart.
ROOM_SIZE_RANGE = ((3.0, 2.5, 2.4), (10.0, 8.0, 4.0))
RT60_RANGE = (0.2, 0.7)
_WALL_MARGIN = 0.4
_MIN_DISTANCE = 0.5


def sample_room(rng: np.random.Generator) -> Room:
    """Draws a room, a reverberation time and talker / microphone positions.

    Arguments
    ---------
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    Room
        The room.

    Example
    -------
    >>> room = sample_room(np.random.default_rng(0))
    >>> all(0 < p < s for p, s in zip(room.source, room.size))
    True
    """
    size = rng.uniform(*ROOM_SIZE_RANGE)
    while True:
        source = rng.uniform(_WALL_MARGIN, size - _WALL_MARGIN)
        microphone = rng.uniform(_WALL_MARGIN, size - _WALL_MARGIN)
        if np.linalg.norm(source - microphone) >= _MIN_DISTANCE:
            break
    return Room(
        size=tuple(float(x) for x in size),
        rt60=float(rng.uniform(*RT60_RANGE)),
        source=tuple(float(x) for x in source),
        microphone=tuple(float(x) for x in microphone),
    )


# The image-source method is exact but its cost grows with the cube of the
# reflection order, which long reverberation in a small room drives past 100
# (about a second per room). Images up to this order give the early
# reflections; the late reverberation is an exponentially decaying Gaussian
# tail with the room's RT60 (a standard hybrid; pyroomacoustics' own ray-traced
# tail is not reproducible from a seed).
MAX_IMAGE_ORDER = 12
SPEED_OF_SOUND = 343.0
_TAIL_WINDOW = 0.01  # seconds of image-source response that set the tail's level


def room_impulse_response(room: Room, rng: np.random.Generator) -> np.ndarray:
    """Simulates the room's impulse response: image sources (pyroomacoustics) plus a late tail.

    Arguments
    ---------
    room : Room
        The room.
    rng : np.random.Generator
        Draws the late reverberation tail.

    Returns
    -------
    np.ndarray
        (taps,) float32 at 16 kHz, scaled to a peak of 1.

    Example
    -------
    >>> room = Room((5.0, 4.0, 3.0), 0.5, (1.0, 1.0, 1.5), (3.0, 2.5, 1.2))
    >>> rir = room_impulse_response(room, np.random.default_rng(0))
    >>> float(np.abs(rir).max()), len(rir) / 16000 > 0.5
    (1.0, True)
    """
    import pyroomacoustics

    size = np.asarray(room.size)
    try:
        absorption, max_order = pyroomacoustics.inverse_sabine(room.rt60, size)
    except ValueError:
        # Too small a room for this RT60 even with rigid walls: the most reverberant one.
        absorption, max_order = 0.01, MAX_IMAGE_ORDER
    order = min(max_order, MAX_IMAGE_ORDER)
    simulation = pyroomacoustics.ShoeBox(
        size, fs=SAMPLE_RATE, materials=pyroomacoustics.Material(absorption), max_order=order
    )
    simulation.add_source(list(room.source))
    simulation.add_microphone(list(room.microphone))
    simulation.compute_rir()
    early = np.asarray(simulation.rir[0][0], dtype=np.float64)
    if max_order > order:
        # Up to about order * (smallest dimension) of extra path every image is
        # present; from there on, a tail decaying by 60 dB per RT60 continues
        # at the level of the last complete stretch.
        direct = int(np.argmax(np.abs(early)))
        start = direct + int(order * size.min() / SPEED_OF_SOUND * SAMPLE_RATE)
        window = int(_TAIL_WINDOW * SAMPLE_RATE)
        level = np.sqrt(np.mean(early[start - window : start] ** 2))
        length = int(room.rt60 * SAMPLE_RATE)
        decay = 10.0 ** (-3.0 * np.arange(length) / (room.rt60 * SAMPLE_RATE))
        rir = np.zeros(start + length)
        rir[:start] = early[:start]
        rir[start:] = level * decay * rng.standard_normal(length)
    else:
        rir = early
    return (rir / np.abs(rir).max()).astype(np.float32)


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolves speech with an impulse response, keeping the direct sound in place.

    Arguments
    ---------
    speech : np.ndarray
        (samples,) dry speech.
    rir : np.ndarray
        (taps,) impulse response.

    Returns
    -------
    np.ndarray
        (samples,) float32 reverberant speech, same length as ``speech``.

    Example
    -------
    >>> speech = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    >>> bool(np.allclose(reverberate(speech, np.array([0.0, 1.0], np.float32)), speech))
    True
    """
    delay = int(np.argmax(np.abs(rir)))
    wet = oaconvolve(speech, rir)[delay : delay + len(speech)]
    return wet.astype(np.float32)


# The session channel: an equaliser with this many random gains (dB, uniform in
# +-EQ_MAX_GAIN_DB) at log-spaced frequencies, and a level in LEVEL_RANGE_DB (dBFS RMS).
EQ_NUM_BANDS = 8
EQ_MAX_GAIN_DB = 8.0
_EQ_TAPS = 129
LEVEL_RANGE_DB = (-32.0, -18.0)


@dataclass(frozen=True)
class Channel:
    """The recording channel of one session: a microphone-like equaliser and a level.

    Arguments
    ---------
    eq_gains_db : tuple of float
        Equaliser gains (dB) at log-spaced frequencies between 100 Hz and 7 kHz.
    level_db : float
        RMS level of the recording in dB relative to full scale.
    """

    eq_gains_db: Tuple[float, ...]
    level_db: float


def sample_channel(rng: np.random.Generator) -> Channel:
    """Draws a session channel.

    Arguments
    ---------
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    Channel
        The channel.
    """
    gains = rng.uniform(-EQ_MAX_GAIN_DB, EQ_MAX_GAIN_DB, EQ_NUM_BANDS)
    return Channel(tuple(float(g) for g in gains), float(rng.uniform(*LEVEL_RANGE_DB)))


def equalise(wav: np.ndarray, gains_db: Sequence[float]) -> np.ndarray:
    """Filters with a linear-phase FIR whose response interpolates ``gains_db`` (100 Hz - 7 kHz).

    Arguments
    ---------
    wav : np.ndarray
        (samples,) audio.
    gains_db : sequence of float
        Gains at log-spaced frequencies between 100 Hz and 7 kHz; flat outside.

    Returns
    -------
    np.ndarray
        (samples,) float32, aligned with the input.

    Example
    -------
    >>> wav = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    >>> bool(np.allclose(equalise(wav, [0.0] * 4)[200:-200], wav[200:-200], atol=1e-2))
    True
    """
    nyquist = SAMPLE_RATE / 2
    centres = np.geomspace(100.0, 7000.0, len(gains_db)) / nyquist
    frequencies = np.concatenate([[0.0], centres, [1.0]])
    gains = 10.0 ** (np.concatenate([[gains_db[0]], gains_db, [gains_db[-1]]]) / 20.0)
    taps = firwin2(_EQ_TAPS, frequencies, gains)
    delay = _EQ_TAPS // 2
    return oaconvolve(wav, taps)[delay : delay + len(wav)].astype(np.float32)


TELEPHONE_BAND = (300.0, 3400.0)
_BAND_ORDER = 6


def band_limit(wav: np.ndarray, band: Tuple[float, float] = TELEPHONE_BAND) -> np.ndarray:
    """Band-pass filter (Butterworth), by default the telephone band 300-3400 Hz.

    Arguments
    ---------
    wav : np.ndarray
        (samples,) audio at 16 kHz.
    band : tuple of float
        Low and high cut-off in Hz.

    Returns
    -------
    np.ndarray
        (samples,) float32.

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> low = band_limit(np.sin(2 * np.pi * 100 * t).astype(np.float32))
    >>> bool(np.abs(low[8000:]).max() < 0.05)
    True
    """
    sos = butter(_BAND_ORDER, band, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, wav).astype(np.float32)


# Largest sample magnitude written, a little under full scale.
_PEAK = 0.99


def to_pcm16(wav: np.ndarray, level_db: float) -> np.ndarray:
    """Sets the RMS level (dBFS), lowers it if needed so nothing clips, and quantises to int16.

    Arguments
    ---------
    wav : np.ndarray
        (samples,) float audio.
    level_db : float
        Target RMS level in dB relative to full scale.

    Returns
    -------
    np.ndarray
        (samples,) int16.

    Example
    -------
    >>> pcm = to_pcm16(np.ones(10, dtype=np.float32), level_db=-20.0)
    >>> int(pcm[0])
    3277
    """
    rms = np.sqrt(np.mean(wav.astype(np.float64) ** 2)) + 1e-12
    wav = wav * (10.0 ** (level_db / 20.0) / rms)
    peak = np.abs(wav).max(initial=0.0)
    if peak > _PEAK:
        wav = wav * (_PEAK / peak)
    return np.round(wav * 32767.0).astype(np.int16)
