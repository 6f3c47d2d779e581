"""Training and validation data pipelines: random crops and speed perturbation.

The pipelines read the utterance manifests (``ID,duration,wav,spk_id``) into
SpeechBrain ``DynamicItemDataset``s. Training items are random crops that
decode only their frames, so a crop never decodes a whole long file; short
files are wrap-padded. Files at another sample rate or with several channels
are read as inference reads them (:mod:`lap_speechbrain.data.audio`). Speed
perturbation happens per utterance in the data pipeline, because it changes
the label (each speed is a new class). Additive
noise and reverberation run on the batch, on the training device
(:mod:`lap_speechbrain.augment`).

Authors
 * lap-speechbrain contributors 2026
"""

import math
import random
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torchaudio.functional as AF
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.data_pipeline import provides, takes

from lap_speechbrain.data.audio import read_audio

PathLike = Union[str, Path]


def wrap_pad(signal: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Repeats ``signal`` until it has ``num_samples`` samples (the reference's padding).

    Example
    -------
    >>> wrap_pad(torch.tensor([1.0, 2.0, 3.0]), 7).tolist()
    [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    """
    if len(signal) == 0:
        raise ValueError("cannot wrap-pad an empty signal")
    if len(signal) >= num_samples:
        return signal[:num_samples]
    return signal.repeat(math.ceil(num_samples / len(signal)))[:num_samples]


def read_crop(path: str, num_samples: int, sample_rate: int) -> torch.Tensor:
    """Reads a random ``num_samples`` crop of a file, decoding only those frames.

    Arguments
    ---------
    path : str
        Audio file (any rate and channel count; see :func:`~lap_speechbrain.data.audio.read_audio`).
    num_samples : int
        Crop length in samples at ``sample_rate``.
    sample_rate : int
        Sample rate of the crop.

    Returns
    -------
    torch.Tensor
        (num_samples,) float32, mono; files shorter than the crop are wrap-padded.
    """
    signal = read_audio(path, sample_rate, num_samples, random_start=True)
    if len(signal) == 0:
        raise ValueError(f"{path}: no audio samples")
    return wrap_pad(signal, num_samples)


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
        Sample rate the model takes (files at other rates are resampled).
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

    @takes("wav", "spk_id")
    @provides("sig", "spk_id_encoded")
    def crop_pipeline(wav: str, spk_id: str):
        label = label_encoder.encode_label(spk_id)
        speed_index = 0
        if speed_factors and random.random() < speed_prob:
            speed_index = random.randint(1, len(speed_factors))
        if speed_index == 0:
            yield read_crop(wav, num_samples, sample_rate)
        else:
            factor = speed_factors[speed_index - 1]
            source = read_crop(wav, int(round(num_samples * factor)), sample_rate)
            yield wrap_pad(change_speed(source, factor, sample_rate), num_samples)
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
        Sample rate the model takes (files at other rates are resampled).
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
        return read_audio(wav, sample_rate, max_samples)

    dataset.add_dynamic_item(audio_pipeline)
    dataset.set_output_keys(["id", "sig"])
    wanted = set(ids)
    return dataset.filtered_sorted(key_test={"id": lambda uid: uid in wanted}, sort_key="duration")
