"""Offline text-to-speech for the synthetic corpus: espeak-ng voices, speakers and sentences.

Speech comes from libespeak-ng as bundled by the ``espeakng-loader`` package
(no system install, no network), driven through ``ctypes`` in synchronous
mode: one call returns the whole waveform, several hundred times faster than
real time. A synthetic *speaker* is an espeak voice (a language, whose
letter-to-sound rules give an accent, plus one of the ~100 voice variants,
which set the glottal source and formants) together with a base pitch, an
intonation range, a speaking rate and a vocal-tract factor. The factor
rescales the time axis when resampling to 16 kHz, which moves formants and
pitch together, as a shorter or longer vocal tract would.

Authors
 * lap-speechbrain contributors 2026
"""

import _ctypes
import ctypes
import importlib.metadata
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000

# Languages whose letter-to-sound rules read Latin-script text; reading the
# same English word lists, each gives a different accent.
LANGUAGES = (
    "en", "en-us", "en-gb-scotland", "en-029", "de", "fr", "es", "it", "nl", "pt",
    "pl", "sv", "da", "cs", "fi", "hu", "ro", "id", "af", "sk", "hr", "tr", "nb",
)  # fmt: skip

# Speaker ranges (espeak units: pitch and range 0-100, rate in words per minute).
PITCH_RANGE = (20.0, 80.0)
INTONATION_RANGE = (20.0, 80.0)
RATE_RANGE = (130.0, 210.0)
VOCAL_TRACT_RANGE = (0.88, 1.14)
# Utterance-to-utterance variation of one speaker: pitch and intonation move by
# a few units (standard deviation) and the rate by a few percent.
PITCH_JITTER = 3.0
INTONATION_JITTER = 6.0
RATE_JITTER = 0.06

# espeak-ng's C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
# Volume below espeak's default (100) so that loud variants do not clip the int16 output.
_VOLUME_PERCENT = 50

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _espeakng_loader():
    """The ``espeakng_loader`` module, or an ImportError that says how to install it."""
    try:
        import espeakng_loader
    except ImportError as error:
        raise ImportError(
            "the synthetic corpus needs the 'espeakng-loader' package: pip install -e '.[demo]'"
        ) from error
    return espeakng_loader


def espeak_version() -> str:
    """Version of the installed ``espeakng-loader`` package (which fixes the espeak-ng release).

    Returns
    -------
    str
        The version, e.g. ``"0.2.4"``.
    """
    _espeakng_loader()
    return importlib.metadata.version("espeakng-loader")


@contextmanager
def _fresh_espeak() -> Iterator[Tuple[ctypes.CDLL, int]]:
    """Loads and initialises libespeak-ng, and unloads it on exit.

    libespeak-ng keeps function-static state between syntheses (the phase of
    its pitch flutter, for one) that neither ``espeak_Terminate`` nor
    ``espeak_Initialize`` resets, so the same call would give different
    samples depending on what the process said before. A fresh load costs a
    few milliseconds and makes every synthesis depend on its arguments only
    (provided nothing else in the process holds the library open).
    """
    espeakng_loader = _espeakng_loader()
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data_path = espeakng_loader.get_data_path().encode()
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {sample_rate}) with data {data_path}")
        try:
            yield lib, sample_rate
        finally:
            lib.espeak_Terminate()
    finally:
        _unload(lib._handle)


# The platform's call to unload a shared library.
_unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")
# The C library (whose rand() the Klatt voices use); POSIX only.
_LIBC = ctypes.CDLL(None) if os.name == "posix" else None


def voice_variants() -> List[str]:
    """Names of the voice variants shipped with espeak-ng (e.g. ``m3``, ``f2``, ``klatt``), sorted.

    Returns
    -------
    list of str
        Variant names, usable as ``<language>+<variant>``.

    Example
    -------
    >>> variants = voice_variants()
    >>> "m3" in variants and len(variants) > 50
    True
    """
    folder = os.path.join(_espeakng_loader().get_data_path(), "voices", "!v")
    return sorted(name for name in os.listdir(folder) if " " not in name)


def synthesize(
    text: str,
    voice: str,
    pitch: float,
    intonation: float,
    rate: float,
    vocal_tract: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Speaks ``text`` with an espeak-ng voice and returns 16 kHz float32 samples.

    Arguments
    ---------
    text : str
        What to say.
    voice : str
        espeak voice name, ``<language>`` or ``<language>+<variant>`` (e.g. ``"de+f2"``).
    pitch : float
        Base pitch, 0-100 (espeak's scale; 50 is the voice's default).
    intonation : float
        Pitch range, 0-100 (0 is monotone).
    rate : float
        Speaking rate in words per minute (80-450).
    vocal_tract : float
        Vocal-tract factor: above 1 raises formants and pitch and shortens the
        speech by the same ratio (a shorter tract), below 1 the opposite.
    seed : int
        Seed of espeak's breath and aspiration noise (used by some variants).

    Returns
    -------
    np.ndarray
        (samples,) float32 in [-1, 1] at :data:`SAMPLE_RATE`.

    Note
    ----
    libespeak-ng is process-global: call this from one thread at a time
    (use processes for parallelism).

    Example
    -------
    >>> wav = synthesize("hello world", "en+m3", pitch=50, intonation=50, rate=175)
    >>> wav.dtype, 0.5 < len(wav) / SAMPLE_RATE < 2.0
    (dtype('float32'), True)
    """
    chunks: List[np.ndarray] = []

    def collect(samples, num_samples, events):
        if num_samples > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    callback = _SYNTH_CALLBACK(collect)  # must stay referenced while espeak calls it
    with _fresh_espeak() as (lib, native_rate):
        lib.espeak_SetSynthCallback(callback)
        # Breath and aspiration noise come from espeak's own generator and, in
        # the Klatt voices, from the C library's rand(): seed both.
        lib.espeak_ng_SetRandSeed(seed)
        if _LIBC is not None:
            _LIBC.srand(seed & 0xFFFFFFFF)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown espeak voice {voice!r}: expected <language>[+<variant>]")
        settings = {_RATE: rate, _PITCH: pitch, _RANGE: intonation, _VOLUME: _VOLUME_PERCENT}
        for parameter, value in settings.items():
            lib.espeak_SetParameter(parameter, int(round(value)), 0)
        encoded = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != 0:
        raise RuntimeError(f"espeak_Synth failed with status {status} for voice {voice!r}")
    wav = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    wav = wav.astype(np.float32) / 32768.0
    # Playing the native-rate samples as if recorded at native_rate * vocal_tract
    # scales every frequency by vocal_tract; then resample that to 16 kHz.
    ratio = Fraction(SAMPLE_RATE / (native_rate * vocal_tract)).limit_denominator(1000)
    return resample_poly(wav, ratio.numerator, ratio.denominator).astype(np.float32)


@dataclass(frozen=True)
class SpeakerProfile:
    """The fixed traits of one synthetic speaker.

    Arguments
    ---------
    language : str
        espeak language (accent), e.g. ``"de"``.
    variant : str
        espeak voice variant, e.g. ``"m3"``.
    pitch : float
        Base pitch, espeak units 0-100.
    intonation : float
        Pitch range, espeak units 0-100.
    rate : float
        Speaking rate, words per minute.
    vocal_tract : float
        Vocal-tract (resampling) factor.
    """

    language: str
    variant: str
    pitch: float
    intonation: float
    rate: float
    vocal_tract: float

    @property
    def voice(self) -> str:
        """The espeak voice name ``<language>+<variant>``."""
        return f"{self.language}+{self.variant}"


def sample_speakers(rng: np.random.Generator, num_speakers: int) -> List[SpeakerProfile]:
    """Draws speaker profiles; no two share a (language, variant) pair until all pairs are used.

    Arguments
    ---------
    rng : np.random.Generator
        Source of randomness.
    num_speakers : int
        How many speakers.

    Returns
    -------
    list of SpeakerProfile
        The speakers.

    Example
    -------
    >>> speakers = sample_speakers(np.random.default_rng(0), 3)
    >>> len({(s.language, s.variant) for s in speakers})
    3
    """
    pairs = [(language, variant) for language in LANGUAGES for variant in voice_variants()]
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(-(-num_speakers // len(pairs)))])
    speakers = []
    for index in order[:num_speakers]:
        language, variant = pairs[index]
        speakers.append(
            SpeakerProfile(
                language=language,
                variant=variant,
                pitch=float(rng.uniform(*PITCH_RANGE)),
                intonation=float(rng.uniform(*INTONATION_RANGE)),
                rate=float(rng.uniform(*RATE_RANGE)),
                vocal_tract=float(rng.uniform(*VOCAL_TRACT_RANGE)),
            )
        )
    return speakers


def speak(speaker: SpeakerProfile, text: str, rng: np.random.Generator) -> np.ndarray:
    """Says ``text`` as ``speaker``, with small utterance-to-utterance variation of pitch, range and rate.

    Arguments
    ---------
    speaker : SpeakerProfile
        Who speaks.
    text : str
        What to say.
    rng : np.random.Generator
        Draws this utterance's variation.

    Returns
    -------
    np.ndarray
        (samples,) float32 at :data:`SAMPLE_RATE`.
    """
    return synthesize(
        text,
        speaker.voice,
        pitch=float(np.clip(speaker.pitch + rng.normal(0.0, PITCH_JITTER), 0, 100)),
        intonation=float(np.clip(speaker.intonation + rng.normal(0.0, INTONATION_JITTER), 0, 100)),
        rate=speaker.rate * float(1.0 + rng.uniform(-RATE_JITTER, RATE_JITTER)),
        vocal_tract=speaker.vocal_tract,
        seed=int(rng.integers(2**31)),
    )


_WORDS = {
    "adjective": (
        "quiet bright heavy narrow golden silver ancient modern gentle sudden careful "
        "distant curious simple broken famous hidden purple yellow frozen wooden "
        "empty crowded hollow tiny enormous rusty shiny lonely cheerful sleepy"
    ).split(),
    "noun": (
        "river garden window teacher engine island market doctor letter forest "
        "bridge kitchen painter village mountain station harbour camera blanket "
        "ladder pocket basket castle tractor lantern violin pencil carpet rabbit "
        "farmer sailor museum orchard tunnel bottle wagon hammer mirror"
    ).split(),
    "verb": (
        "carried found painted opened watched followed cleaned borrowed visited "
        "repaired noticed described measured collected finished pushed lifted "
        "ordered counted covered"
    ).split(),
    "adverb": (
        "slowly quickly quietly again yesterday carefully suddenly early later "
        "twice together happily"
    ).split(),
    "preposition": "near behind under beside above inside across beyond".split(),
    "name": (
        "Anna Peter Maria David Laura Thomas Elena Victor Sofia Martin Clara Oscar "
        "Julia Henry Nora Felix"
    ).split(),
    "number": (
        "two three four five six seven eight nine ten eleven twelve twenty thirty forty"
    ).split(),
    "conjunction": "and but while because although so".split(),
}


def _pick(rng: np.random.Generator, kind: str) -> str:
    words = _WORDS[kind]
    return words[int(rng.integers(len(words)))]


def _clause(rng: np.random.Generator) -> List[str]:
    """One random clause from a handful of templates."""
    template = int(rng.integers(4))
    if template == 0:
        words = ["the", _pick(rng, "adjective"), _pick(rng, "noun"), _pick(rng, "verb"),
                 "the", _pick(rng, "noun"), _pick(rng, "preposition"), "the", _pick(rng, "noun")]  # fmt: skip
    elif template == 1:
        words = [_pick(rng, "name"), _pick(rng, "adverb"), _pick(rng, "verb"), "a",
                 _pick(rng, "adjective"), _pick(rng, "noun")]  # fmt: skip
    elif template == 2:
        words = ["there were", _pick(rng, "number"), _pick(rng, "adjective"), _pick(rng, "noun") + "s",
                 _pick(rng, "preposition"), "the", _pick(rng, "noun")]  # fmt: skip
    else:
        words = [_pick(rng, "name"), "and", _pick(rng, "name"), _pick(rng, "verb"), _pick(rng, "number"),
                 _pick(rng, "noun") + "s", _pick(rng, "adverb")]  # fmt: skip
    return words


def make_sentences(rng: np.random.Generator, num_words: int) -> str:
    """Random English sentences with at least ``num_words`` words, from word lists and templates.

    Arguments
    ---------
    rng : np.random.Generator
        Source of randomness.
    num_words : int
        Minimum number of words.

    Returns
    -------
    str
        Sentences, each starting with a capital and ending with a full stop.

    Example
    -------
    >>> text = make_sentences(np.random.default_rng(0), 12)
    >>> len(text.split()) >= 12 and text.endswith(".")
    True
    """
    sentences: List[str] = []
    count = 0
    while count < num_words:
        words = _clause(rng)
        if rng.random() < 0.5:
            words = words + [_pick(rng, "conjunction")] + _clause(rng)
        sentence = " ".join(words)
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        count += len(sentence.split())
    return " ".join(sentences)


def speak_duration(
    speaker: SpeakerProfile, duration: float, rng: np.random.Generator
) -> Tuple[np.ndarray, str]:
    """Says fresh random sentences as ``speaker`` and returns exactly ``duration`` seconds of it.

    Arguments
    ---------
    speaker : SpeakerProfile
        Who speaks.
    duration : float
        Seconds of audio to return.
    rng : np.random.Generator
        Draws the sentences and the utterance's variation.

    Returns
    -------
    wav : np.ndarray
        (round(duration * 16000),) float32.
    text : str
        The sentences (the last may be cut off mid-way).
    """
    num_samples = int(round(duration * SAMPLE_RATE))
    # Enough words for the duration at this rate, with a margin for pauses.
    num_words = int(np.ceil(duration * speaker.rate / 60.0 * speaker.vocal_tract * 1.2)) + 2
    pieces: List[np.ndarray] = []
    texts: List[str] = []
    while sum(len(piece) for piece in pieces) < num_samples:
        texts.append(make_sentences(rng, num_words))
        pieces.append(speak(speaker, texts[-1], rng))
    return fit_length(np.concatenate(pieces), num_samples), " ".join(texts)


# Fade applied where a waveform is cut, so the cut does not click (seconds).
_FADE = 0.02


def fit_length(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Cuts ``wav`` to ``num_samples`` with a short fade-out at the cut (pads with zeros if shorter).

    Arguments
    ---------
    wav : np.ndarray
        (samples,) audio.
    num_samples : int
        Output length.

    Returns
    -------
    np.ndarray
        (num_samples,) float32.

    Example
    -------
    >>> fit_length(np.ones(10, dtype=np.float32), 4).shape, float(fit_length(np.ones(2), 4)[-1])
    ((4,), 0.0)
    """
    if len(wav) <= num_samples:
        return np.pad(wav, (0, num_samples - len(wav))).astype(np.float32)
    wav = wav[:num_samples].astype(np.float32)
    fade = min(num_samples, int(_FADE * SAMPLE_RATE))
    wav[num_samples - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return wav


def babble(
    rng: np.random.Generator, duration: float, num_talkers: int, speakers: Sequence[SpeakerProfile]
) -> np.ndarray:
    """Several synthetic talkers speaking at once, each at the same level.

    Arguments
    ---------
    rng : np.random.Generator
        Draws the talkers and what they say.
    duration : float
        Seconds.
    num_talkers : int
        How many voices overlap.
    speakers : sequence of SpeakerProfile
        Pool of talkers to draw from.

    Returns
    -------
    np.ndarray
        (round(duration * 16000),) float32 with unit RMS.
    """
    mix = np.zeros(int(round(duration * SAMPLE_RATE)), dtype=np.float64)
    for index in rng.choice(len(speakers), size=num_talkers, replace=False):
        # A random start inside a longer stretch, so talkers do not all start at once.
        offset = rng.uniform(0.0, 1.0)
        wav, _ = speak_duration(speakers[int(index)], duration + offset, rng)
        wav = wav[int(offset * SAMPLE_RATE) :][: len(mix)]
        mix[: len(wav)] += wav / (np.sqrt(np.mean(wav**2)) + 1e-8)
    return (mix / (np.sqrt(np.mean(mix**2)) + 1e-8)).astype(np.float32)
