"""Training and validation data pipelines: random crops, speed perturbation, augmentation.

The pipelines read the utterance manifests (``ID,duration,wav,spk_id``) into
SpeechBrain ``DynamicItemDataset``s. Training items are random crops read with
soundfile by frame range, so a crop never decodes a whole long file; short
files are wrap-padded. Speed perturbation happens per utterance in the data
pipeline, because it changes the label (each speed is a new class). Additive
noise and reverberation run on the batch, on the training device, through
``speechbrain.augment`` (:class:`OneCorruptionPerUtterance`).

Authors
 * lap-speechbrain contributors 2026
"""

import inspect
import random
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from speechbrain.augment.time_domain import AddNoise
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.data_pipeline import provides, takes

PathLike = Union[str, Path]


def _check_rate(path: str, sample_rate: int, expected: int) -> None:
    if sample_rate != expected:
        raise ValueError(f"{path}: sample rate {sample_rate} Hz; the recipe expects {expected} Hz")


def wrap_pad(signal: np.ndarray, num_samples: int) -> np.ndarray:
    """Repeats ``signal`` until it has ``num_samples`` samples (the reference's padding).

    Example
    -------
    >>> wrap_pad(np.array([1.0, 2.0, 3.0]), 7).tolist()
    [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    """
    if len(signal) == 0:
        raise ValueError("cannot wrap-pad an empty signal")
    return np.resize(signal, num_samples)


def read_crop(path: str, duration: float, num_samples: int, sample_rate: int) -> np.ndarray:
    """Reads a random ``num_samples`` crop of a file, reading only those frames.

    Arguments
    ---------
    path : str
        Audio file (any format soundfile reads).
    duration : float
        Its duration in seconds, from the manifest.
    num_samples : int
        Crop length in samples.
    sample_rate : int
        Expected sample rate.

    Returns
    -------
    numpy.ndarray
        (num_samples,) float32, mono; files shorter than the crop are wrap-padded.
    """
    total = int(duration * sample_rate)
    start = random.randint(0, total - num_samples) if total > num_samples else 0
    stop = start + num_samples if total > num_samples else None
    try:
        signal, rate = soundfile.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"{path}: cannot read audio ({error})") from error
    _check_rate(path, rate, sample_rate)
    return wrap_pad(signal[:, 0], num_samples)


def read_head(path: str, max_samples: Optional[int], sample_rate: int) -> np.ndarray:
    """Reads the first ``max_samples`` samples of a file (all of it with None)."""
    try:
        signal, rate = soundfile.read(path, stop=max_samples, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"{path}: cannot read audio ({error})") from error
    _check_rate(path, rate, sample_rate)
    return signal[:, 0]


def change_speed(signal: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """Plays ``signal`` ``factor`` times faster (pitch moves too), by resampling.

    The signal is read as if it were sampled at ``factor * sample_rate`` and
    resampled to ``sample_rate``: N samples become about N / factor.

    Example
    -------
    >>> change_speed(torch.randn(16000), 1.1, 16000).shape
    torch.Size([14546])
    """
    return AF.resample(signal, orig_freq=int(round(factor * sample_rate)), new_freq=sample_rate)


def speed_class(label: int, speed_index: int, num_speakers: int) -> int:
    """Class of a speaker's utterance played at speed ``speed_index`` (0: unchanged).

    Each speed counts as a new speaker: label + num_speakers * speed_index.

    Example
    -------
    >>> speed_class(3, 0, 10), speed_class(3, 1, 10), speed_class(3, 2, 10)
    (3, 13, 23)
    """
    return label + num_speakers * speed_index


def train_dataset(
    csv_path: PathLike,
    label_encoder: CategoricalEncoder,
    crop_seconds: float,
    sample_rate: int,
    speed_factors: Sequence[float] = (),
    speed_prob: float = 0.0,
) -> DynamicItemDataset:
    """Training dataset of random crops with optional speed perturbation.

    Each item has ``sig`` ((crop_samples,) float32) and ``spk_id_encoded``
    ((1,) long). With probability ``speed_prob`` an utterance is played at one
    of ``speed_factors`` (uniformly chosen; speed k of the list, 1-based, gives
    class label + N*k for N speakers), so while it is on there are
    N * (1 + len(speed_factors)) classes. The crop is read ``factor`` times
    longer and resampled, so every item has exactly ``crop_seconds``.

    Arguments
    ---------
    csv_path : str or Path
        Manifest with ``ID,duration,wav,spk_id``.
    label_encoder : CategoricalEncoder
        Speaker -> 0..N-1.
    crop_seconds : float
        Crop length.
    sample_rate : int
        Sample rate of the audio.
    speed_factors : sequence of float
        Speeds other than 1 (0.9 and 1.1 in the paper).
    speed_prob : float
        Probability that an utterance is speed-perturbed (0: off).

    Returns
    -------
    DynamicItemDataset
    """
    num_speakers = len(label_encoder)
    num_samples = int(round(crop_seconds * sample_rate))
    dataset = DynamicItemDataset.from_csv(csv_path=str(csv_path))

    @takes("wav", "duration", "spk_id")
    @provides("sig", "spk_id_encoded")
    def crop_pipeline(wav: str, duration: float, spk_id: str):
        label = label_encoder.encode_label(spk_id)
        speed_index = 0
        if speed_factors and random.random() < speed_prob:
            speed_index = random.randint(1, len(speed_factors))
        if speed_index == 0:
            yield torch.from_numpy(read_crop(wav, float(duration), num_samples, sample_rate))
        else:
            factor = speed_factors[speed_index - 1]
            source = read_crop(wav, float(duration), int(round(num_samples * factor)), sample_rate)
            changed = change_speed(torch.from_numpy(source), factor, sample_rate)
            yield torch.from_numpy(wrap_pad(changed.numpy(), num_samples))
        yield torch.LongTensor([speed_class(label, speed_index, num_speakers)])

    dataset.add_dynamic_item(crop_pipeline)
    dataset.set_output_keys(["id", "sig", "spk_id_encoded"])
    return dataset


def utterance_id(path: str) -> str:
    """Manifest ID of a trial-list entry: the relative path without extension.

    Example
    -------
    >>> utterance_id("id10270/x6uYqmx31kE/00001.wav")
    'id10270/x6uYqmx31kE/00001'
    """
    return Path(path).with_suffix("").as_posix()


def valid_dataset(
    csv_path: PathLike, ids: Sequence[str], sample_rate: int, max_seconds: Optional[float] = None
) -> DynamicItemDataset:
    """Validation dataset of whole utterances (the first ``max_seconds``), sorted by duration.

    Arguments
    ---------
    csv_path : str or Path
        Manifest holding every utterance of the validation trials.
    ids : sequence of str
        The utterance IDs to keep (see :func:`utterance_id`).
    sample_rate : int
        Sample rate of the audio.
    max_seconds : float, optional
        Longer utterances are cut to this length to bound memory.

    Returns
    -------
    DynamicItemDataset
        Items with ``id`` and ``sig``.
    """
    dataset = DynamicItemDataset.from_csv(csv_path=str(csv_path))
    missing = sorted(set(ids) - set(dataset.data_ids))
    if missing:
        raise ValueError(
            f"{csv_path} lacks {len(missing)} utterances of the validation trials, e.g. {missing[:3]}"
        )
    max_samples = None if max_seconds is None else int(max_seconds * sample_rate)

    @takes("wav")
    @provides("sig")
    def audio_pipeline(wav: str):
        return torch.from_numpy(read_head(wav, max_samples, sample_rate))

    dataset.add_dynamic_item(audio_pipeline)
    dataset.set_output_keys(["id", "sig"])
    wanted = set(ids)
    return dataset.filtered_sorted(key_test={"id": lambda uid: uid in wanted}, sort_key="duration")


class AddBabble(AddNoise):
    """Babble noise: the sum of several speech files added at one SNR.

    SpeechBrain's ``AddNoise`` draws one noise file per utterance; babble in the
    reference is 3 to 6 (or 7) talkers, so this subclass sums
    ``randint(min_speakers, max_speakers)`` draws before ``AddNoise`` rescales
    the sum to the chosen SNR.

    Arguments
    ---------
    min_speakers, max_speakers : int
        Range of the number of talkers summed (inclusive).
    **kwargs
        ``AddNoise`` arguments (``csv_file``, ``snr_low``, ``snr_high``, ...).
    """

    def __init__(self, min_speakers: int = 3, max_speakers: int = 6, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= min_speakers <= max_speakers:
            raise ValueError(f"min_speakers={min_speakers}, max_speakers={max_speakers}: need 1 <= min <= max")
        self.min_speakers = min_speakers
        self.max_speakers = max_speakers

    def _load_noise(self, lengths, max_length):
        talkers = random.randint(self.min_speakers, self.max_speakers)
        babble, babble_len = super()._load_noise(lengths, max_length)
        for _ in range(talkers - 1):
            speech, speech_len = super()._load_noise(lengths, max_length)
            width = max(babble.shape[1], speech.shape[1])
            babble = torch.nn.functional.pad(babble, (0, width - babble.shape[1]))
            babble = babble + torch.nn.functional.pad(speech, (0, width - speech.shape[1]))
            babble_len = torch.maximum(babble_len, speech_len)
        return babble, babble_len


class OneCorruptionPerUtterance(torch.nn.Module):
    """Applies at most one corruption to each utterance of a batch, keeping the batch size.

    ``speechbrain.augment.Augmenter`` draws its augmentations once per *batch*
    and, by default, appends the augmented copies to the batch (SpeechBrain's
    VoxCeleb recipe grows the batch 5x). The paper corrupts each utterance
    independently: with probability ``prob`` one corruption, chosen uniformly,
    replaces the clean signal. This wrapper draws the choice per utterance and
    runs each SpeechBrain augmentation once on the sub-batch that drew it.
    Additive corruptions (``partial``) cover, with probability
    ``partial_prob``, only a random ``partial_range`` fraction of the segment
    instead of all of it.

    Arguments
    ---------
    corruptions : dict of str to torch.nn.Module
        ``speechbrain.augment`` modules (``AddNoise`` and subclasses take
        ``(wavs, lengths)``, ``AddReverb`` takes ``wavs``).
    prob : float
        Probability that an utterance is corrupted.
    partial : sequence of str
        Names of the additive corruptions that may cover part of the segment.
    partial_prob : float
        Probability that such a corruption covers only part of the segment.
    partial_range : tuple of float
        Range of the covered fraction.

    Example
    -------
    >>> corrupt = OneCorruptionPerUtterance({"white": AddNoise(snr_low=0, snr_high=0)}, prob=1.0,
    ...     partial=["white"], partial_prob=0.0)
    >>> wavs = torch.zeros(4, 1600)
    >>> noisy = corrupt(wavs + 0.1, torch.ones(4))
    >>> noisy.shape, bool((noisy != 0.1).all())
    (torch.Size([4, 1600]), True)
    """

    def __init__(
        self,
        corruptions: Dict[str, torch.nn.Module],
        prob: float = 0.6,
        partial: Sequence[str] = (),
        partial_prob: float = 0.0,
        partial_range: Tuple[float, float] = (0.2, 0.6),
    ):
        super().__init__()
        if not corruptions:
            raise ValueError("OneCorruptionPerUtterance needs at least one corruption")
        unknown = sorted(set(partial) - set(corruptions))
        if unknown:
            raise ValueError(f"partial names {unknown} are not among the corruptions {sorted(corruptions)}")
        self.corruptions = torch.nn.ModuleDict(corruptions)
        self.prob = prob
        self.partial = set(partial)
        self.partial_prob = partial_prob
        self.partial_range = tuple(partial_range)

    @staticmethod
    def _takes_lengths(module: torch.nn.Module) -> bool:
        return len(inspect.signature(module.forward).parameters) >= 2

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
        batch = wavs.shape[0]
        corrupted = torch.rand(batch) < self.prob
        choice = torch.randint(len(self.corruptions), (batch,))
        output = wavs.clone()
        for index, (name, module) in enumerate(self.corruptions.items()):
            rows = torch.nonzero(corrupted & (choice == index)).squeeze(1)
            if len(rows) == 0:
                continue
            rows = rows.to(wavs.device)
            clean, clean_lengths = wavs[rows], lengths[rows]
            if self._takes_lengths(module):
                noisy = module(clean, clean_lengths)
            else:
                noisy = module(clean)
            noisy = noisy[:, : clean.shape[1]]
            if name in self.partial:
                noisy = self._cover_part(clean, noisy, clean_lengths)
            output[rows] = noisy.to(output.dtype)
        return output

    def _cover_part(self, clean: torch.Tensor, noisy: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Keeps the corruption on a random window of each chosen row, clean elsewhere."""
        rows, width = clean.shape
        partial = torch.rand(rows) < self.partial_prob
        if not partial.any():
            return noisy
        low, high = self.partial_range
        samples = (lengths.cpu() * width).long()
        fraction = low + (high - low) * torch.rand(rows)
        span = (fraction * samples).long().clamp(min=1)
        start = (torch.rand(rows) * (samples - span + 1).float()).long()
        position = torch.arange(width)
        window = (position >= start[:, None]) & (position < (start + span)[:, None])
        window = window | ~partial[:, None]
        return torch.where(window.to(noisy.device), noisy, clean)
