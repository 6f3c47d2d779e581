"""Waveform augmentation on the training batch, as the reference corrupts (docs/lap_spec.md section 5).

Kept apart from data loading as ``speechbrain.augment`` is: these modules run
on the batch, on the training device, after the data pipeline. Each utterance
gets at most one corruption, chosen uniformly among reverberation, noise,
music, babble and speech + music ("TV"):

- :class:`AddNoiseSources` adds one or several noise files, **each** scaled to
  its own SNR against the speech, on the whole segment or on part of it; the
  speech itself is never rescaled;
- :class:`ConvolveRIR` convolves with a room impulse response scaled to unit
  energy, from a random channel of multi-channel files;
- :class:`OneCorruptionPerUtterance` draws the corruption of each utterance,
  and builds combined ones (TV) from the others.

Why not SpeechBrain's ``AddNoise`` / ``AddReverb``: ``AddNoise`` scales the
speech by 1 - f to make room for the noise (with partial coverage this leaves
a level step of up to 6 dB at the window's edge), sets the SNR of one noise
file, and picks one start offset per batch; ``AddReverb`` uses one RIR for the
whole batch, the first channel, and re-aligns and rescales its output, where
the reference convolves each utterance with its own unit-energy RIR
(docs/differences.md measures that difference).

Authors
 * lap-speechbrain contributors 2026
"""

import inspect
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
from speechbrain.dataio.dataio import load_data_csv

# Added to the mean power of speech and noise before the SNR is set, as the
# reference does: it keeps the gain finite on silence.
POWER_FLOOR = 1e-4
# The reference's coverage choices: all of the segment, 40-60 % or 20-40 % of it.
REFERENCE_COVERAGE = ((1.0, 1.0), (0.4, 0.6), (0.2, 0.4))
# Threads that read noise and RIR files.
READ_THREADS = 8


class _Read(NamedTuple):
    """Samples ``start:stop`` of a file (stop None: to its end), one channel picked by
    ``channel_draw`` (uniform in [0, 1)), repeated to ``length`` samples (None: as read)."""

    path: str
    start: int
    stop: Optional[int]
    length: Optional[int]
    channel_draw: float


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, ()))


class _AudioFiles:
    """The files of a SpeechBrain noise/RIR CSV (``ID,duration,wav,...``), read one channel at a time.

    With ``chunk`` = (length, hop) in samples, each file counts as the pieces
    of ``length`` samples starting every ``hop`` samples that the reference's
    MUSAN preparation cuts (a file of ``length`` samples or less: one piece,
    the whole file), and :meth:`segment` draws a piece uniformly, so a long
    file is drawn more often than a short one. A batch needs hundreds of
    segments, read in parallel threads (libsndfile releases the GIL); every
    random draw happens before, in the calling thread, so a seed fixes the result.
    """

    def __init__(self, csv_file: str, sample_rate: int, chunk: Optional[Tuple[int, int]] = None):
        rows = load_data_csv(csv_file)
        if not rows:
            raise ValueError(f"{csv_file}: no audio files listed")
        self.csv_file = csv_file
        self.paths = [row["wav"] for row in rows.values()]
        self.totals = [int(round(float(row["duration"]) * sample_rate)) for row in rows.values()]
        self.sample_rate = sample_rate
        self.chunk = chunk
        pieces = [1] * len(self.paths)
        if chunk is not None:
            length, hop = chunk
            pieces = [max(1, math.ceil((total - length) / hop)) for total in self.totals]
        self.first_piece = np.cumsum([0] + pieces)

    def _read(self, request: _Read) -> np.ndarray:
        try:
            audio, rate = soundfile.read(
                request.path, start=request.start, stop=request.stop, dtype="float32", always_2d=True
            )
        except (RuntimeError, soundfile.LibsndfileError) as error:
            raise ValueError(f"{request.path} (listed in {self.csv_file}): cannot read audio ({error})") from error
        if rate != self.sample_rate:
            raise ValueError(
                f"{request.path} (listed in {self.csv_file}): {rate} Hz, expected {self.sample_rate} Hz"
            )
        # A random channel of multi-channel files (microphone arrays), as the reference.
        audio = audio[:, int(request.channel_draw * audio.shape[1])]
        if request.length is None:
            return audio
        # Pieces shorter than the segment are repeated (wrap-padded), as the reference.
        return np.resize(audio, request.length) if len(audio) else np.zeros(request.length, np.float32)

    def read(self, requests: Sequence[_Read]) -> List[np.ndarray]:
        """The audio of each request, read in parallel."""
        if len(requests) <= 1:
            return [self._read(request) for request in requests]
        with ThreadPoolExecutor(min(READ_THREADS, len(requests))) as pool:
            return list(pool.map(self._read, requests))

    def whole(self) -> _Read:
        """Draws a request for one random file, whole."""
        path = self.paths[_randint(0, len(self.paths) - 1)]
        return _Read(path, 0, None, None, float(torch.rand(())))

    def segment(self, num_samples: int) -> _Read:
        """Draws a request for a random ``num_samples`` segment of a random piece."""
        piece = _randint(0, int(self.first_piece[-1]) - 1)
        index = int(np.searchsorted(self.first_piece, piece, side="right")) - 1
        total = self.totals[index]
        if self.chunk is None or total <= self.chunk[0]:
            begin, size = 0, total
        else:
            begin, size = (piece - int(self.first_piece[index])) * self.chunk[1], self.chunk[0]
        if size > num_samples:
            begin += _randint(0, size - num_samples)
            size = num_samples
        return _Read(self.paths[index], begin, begin + size, num_samples, float(torch.rand(())))


class AddNoiseSources(torch.nn.Module):
    """Adds noise files to speech, each source at its own SNR, without rescaling the speech.

    For each utterance: one coverage range is drawn from ``coverage``; then
    ``randint(min_sources, max_sources)`` sources are added, each covering a
    random fraction (in that range) of the utterance at a random position,
    scaled so that its mean power over that window is ``snr`` dB (uniform in
    ``snr_low..snr_high``) below the mean power of the speech over the
    utterance. Babble is 4-7 speech files, each at 13-20 dB.

    Each source is drawn as the reference draws it: the reference cuts MUSAN
    into pieces of 5 s every 3 s and picks a piece uniformly (so long files
    are picked more often), then a random segment of the piece (a random
    channel), repeated when the piece is shorter than the segment. Here the
    files stay whole and the pieces are positions in them; a file of 5 s or
    less is one piece (the reference's preparation drops such files).

    Arguments
    ---------
    csv_file : str
        SpeechBrain noise CSV (``ID,duration,wav,...``), e.g. from
        :func:`lap_speechbrain.data.prepare_noise_csvs`.
    snr_low, snr_high : float
        SNR range in dB of each source against the speech.
    min_sources, max_sources : int
        Range of the number of sources added (inclusive).
    coverage : sequence of (float, float)
        Ranges of the covered fraction of the utterance; one is drawn
        uniformly per utterance. The default is the reference's: all of it,
        40-60 % or 20-40 %.
    chunk_seconds, chunk_hop_seconds : float
        Length and spacing of the pieces; ``chunk_seconds=None`` draws files
        uniformly and a segment anywhere in them.
    sample_rate : int
        Sample rate of speech and noise files.

    Example
    -------
    >>> import numpy
    >>> folder = getfixture("tmpdir")
    >>> soundfile.write(str(folder / "hum.wav"), numpy.sin(numpy.arange(8000) / 5.0), 16000)
    >>> _ = (folder / "noise.csv").write("ID,duration,wav,wav_format,wav_opts\\n"
    ...     f"hum,0.5,{folder / 'hum.wav'},wav,\\n")
    >>> add = AddNoiseSources(str(folder / "noise.csv"), snr_low=10, snr_high=10, coverage=[(1.0, 1.0)])
    >>> speech = 0.5 * torch.randn(2, 4000)
    >>> noise = add(speech, torch.ones(2)) - speech
    >>> [round(snr, 1) for snr in (10 * torch.log10(speech.square().mean(1) / noise.square().mean(1))).tolist()]
    [10.0, 10.0]
    """

    def __init__(
        self,
        csv_file: str,
        snr_low: float,
        snr_high: float,
        min_sources: int = 1,
        max_sources: int = 1,
        coverage: Sequence[Tuple[float, float]] = REFERENCE_COVERAGE,
        chunk_seconds: Optional[float] = 5.0,
        chunk_hop_seconds: float = 3.0,
        sample_rate: int = 16000,
    ):
        super().__init__()
        if not 1 <= min_sources <= max_sources:
            raise ValueError(f"min_sources={min_sources}, max_sources={max_sources}: need 1 <= min <= max")
        coverage = [tuple(float(bound) for bound in pair) for pair in coverage]
        if not coverage or any(len(pair) != 2 or not 0 < pair[0] <= pair[1] <= 1 for pair in coverage):
            raise ValueError(f"coverage={coverage}: expected (low, high) pairs with 0 < low <= high <= 1")
        chunk = None
        if chunk_seconds is not None:
            chunk = (round(chunk_seconds * sample_rate), round(chunk_hop_seconds * sample_rate))
            if min(chunk) < 1:
                raise ValueError(f"chunk_seconds={chunk_seconds}, chunk_hop_seconds={chunk_hop_seconds}: need > 0")
        self.files = _AudioFiles(csv_file, sample_rate, chunk)
        self.snr_low, self.snr_high = snr_low, snr_high
        self.min_sources, self.max_sources = min_sources, max_sources
        self.coverage = coverage

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, full_length: bool = False) -> torch.Tensor:
        """Noisy waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) speech.
        lengths : torch.Tensor
            (B,) relative lengths; padding stays untouched.
        full_length : bool
            Cover all of every utterance whatever ``coverage`` says (the TV
            corruption).

        Returns
        -------
        torch.Tensor
            (B, N) speech plus noise.
        """
        counts = torch.round(lengths * wavs.shape[1]).long()
        valid = torch.arange(wavs.shape[1], device=wavs.device) < counts[:, None].to(wavs.device)
        energies = (wavs.double().square() * valid).sum(dim=1).tolist()
        # Every random draw first (row, window, SNR, file), then all the reads at once.
        plan, requests = [], []
        for row, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            low, high = (1.0, 1.0) if full_length else self.coverage[_randint(0, len(self.coverage) - 1)]
            for _ in range(_randint(self.min_sources, self.max_sources)):
                span = max(1, int(_uniform(low, high) * count))
                requests.append(self.files.segment(span))
                snr = _uniform(self.snr_low, self.snr_high)
                plan.append((row, _randint(0, count - span), span, energies[row] / count, snr))
        noisy = wavs.clone()
        for (row, start, span, speech_power, snr), noise in zip(plan, self.files.read(requests)):
            noise_power = float(np.square(noise, dtype=np.float64).mean())
            gain = math.sqrt((speech_power + POWER_FLOOR) / (noise_power + POWER_FLOOR) * 10 ** (-snr / 10))
            source = torch.from_numpy(noise).to(device=wavs.device, dtype=wavs.dtype)
            noisy[row, start : start + span] += gain * source
        return noisy


class ConvolveRIR(torch.nn.Module):
    """Reverberation: each utterance convolved with its own room impulse response.

    The RIR (a random file of the CSV, a random channel) is scaled to unit
    energy and convolved with the utterance; the output keeps the first N
    samples of the full convolution, so the direct path keeps its delay and
    the level is what the RIR gives (no re-alignment, no rescaling).

    Arguments
    ---------
    csv_file : str
        SpeechBrain RIR CSV (``ID,duration,wav,...``).
    sample_rate : int
        Sample rate of speech and RIR files.

    Example
    -------
    >>> import numpy
    >>> folder = getfixture("tmpdir")
    >>> soundfile.write(str(folder / "echo.wav"), numpy.array([0.0, 0.3, 0.0, 0.4]), 16000)
    >>> _ = (folder / "rir.csv").write("ID,duration,wav,wav_format,wav_opts\\n"
    ...     f"echo,0.00025,{folder / 'echo.wav'},wav,\\n")
    >>> reverberant = ConvolveRIR(str(folder / "rir.csv"))(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]), torch.ones(1))
    >>> [round(value, 4) + 0.0 for value in reverberant[0].tolist()]
    [0.0, 0.6, 0.0, 0.8, 0.0]
    """

    def __init__(self, csv_file: str, sample_rate: int = 16000):
        super().__init__()
        self.files = _AudioFiles(csv_file, sample_rate)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reverberant waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) speech.
        lengths : torch.Tensor
            (B,) relative lengths; padding stays untouched.

        Returns
        -------
        torch.Tensor
            (B, N).
        """
        rirs = [torch.from_numpy(rir) for rir in self.files.read([self.files.whole() for _ in range(len(wavs))])]
        rirs = torch.nn.utils.rnn.pad_sequence(rirs, batch_first=True).to(wavs.device)
        energy = rirs.square().sum(dim=1, keepdim=True)
        rirs = rirs / energy.sqrt().clamp(min=torch.finfo(rirs.dtype).tiny)
        valid = torch.arange(wavs.shape[1], device=wavs.device) < torch.round(lengths * wavs.shape[1])[:, None]
        speech = (wavs * valid).float()
        # Full convolution through the FFT, at a power-of-two size (prime sizes are slow).
        size = 1 << (wavs.shape[1] + rirs.shape[1] - 2).bit_length()
        spectrum = torch.fft.rfft(speech, size) * torch.fft.rfft(rirs, size)
        reverberant = torch.fft.irfft(spectrum, size)[:, : wavs.shape[1]].to(wavs.dtype)
        return torch.where(valid & (energy > 0), reverberant, wavs)


class OneCorruptionPerUtterance(torch.nn.Module):
    """Applies at most one corruption to each utterance of a batch, keeping the batch size.

    ``speechbrain.augment.Augmenter`` draws its augmentations once per *batch*
    and, by default, appends the augmented copies to the batch (SpeechBrain's
    VoxCeleb recipe grows the batch 5x). The reference corrupts each utterance
    independently: with probability ``prob`` one corruption, chosen uniformly
    among the corruptions and the combinations, replaces the clean signal.
    This wrapper draws the choice per utterance and runs each module once on
    the sub-batch that drew it. A combination applies several of the
    corruptions in order, each over the whole utterance (the reference's TV is
    babble then music); its parts must accept ``full_length=True``
    (:class:`AddNoiseSources` does).

    Arguments
    ---------
    corruptions : dict of str to torch.nn.Module
        Modules taking ``(wavs, lengths)`` (or ``(wavs)``, e.g. SpeechBrain's
        ``AddReverb``) and returning the corrupted ``wavs``.
    prob : float
        Probability that an utterance is corrupted.
    combinations : dict of str to list of str, optional
        Further corruptions made of the named ones, applied in order.

    Example
    -------
    >>> from speechbrain.augment.time_domain import AddNoise
    >>> corrupt = OneCorruptionPerUtterance({"white": AddNoise(snr_low=0, snr_high=0)}, prob=1.0)
    >>> noisy = corrupt(torch.full((4, 1600), 0.1), torch.ones(4))
    >>> noisy.shape, bool((noisy != 0.1).all())
    (torch.Size([4, 1600]), True)
    """

    def __init__(
        self,
        corruptions: Dict[str, torch.nn.Module],
        prob: float = 0.6,
        combinations: Optional[Mapping[str, Sequence[str]]] = None,
    ):
        super().__init__()
        combinations = {name: list(parts) for name, parts in (combinations or {}).items()}
        if not corruptions:
            raise ValueError("OneCorruptionPerUtterance needs at least one corruption")
        for name, parts in combinations.items():
            unknown = sorted(set(parts) - set(corruptions))
            if name in corruptions or not parts or unknown:
                raise ValueError(
                    f"combination {name!r}: {parts} must be a non-empty list of the corruptions "
                    f"{sorted(corruptions)} under a new name (unknown: {unknown})"
                )
        self.corruptions = torch.nn.ModuleDict(corruptions)
        self.combinations = combinations
        self.prob = prob

    @staticmethod
    def _takes_lengths(module: torch.nn.Module) -> bool:
        return len(inspect.signature(module.forward).parameters) >= 2

    def _apply(self, name: str, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if name in self.combinations:
            for part in self.combinations[name]:
                wavs = self.corruptions[part](wavs, lengths, full_length=True)
            return wavs
        module = self.corruptions[name]
        return module(wavs, lengths) if self._takes_lengths(module) else module(wavs)

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Corrupts a batch.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms.
        lengths : torch.Tensor
            (B,) relative lengths.

        Returns
        -------
        torch.Tensor
            (B, N) waveforms; uncorrupted rows are returned unchanged.
        """
        names = [*self.corruptions, *self.combinations]
        batch = wavs.shape[0]
        corrupted = torch.rand(batch) < self.prob
        choice = torch.randint(len(names), (batch,))
        output = wavs.clone()
        for index, name in enumerate(names):
            rows = torch.nonzero(corrupted & (choice == index)).squeeze(1).to(wavs.device)
            if len(rows) == 0:
                continue
            noisy = self._apply(name, wavs[rows], lengths[rows])
            output[rows] = noisy[:, : wavs.shape[1]].to(output.dtype)
        return output
