"""Waveform augmentation on the training batch: one corruption per utterance, babble.

Kept apart from data loading as ``speechbrain.augment`` is: these modules run
on the batch, on the training device, after the data pipeline.

Authors
 * lap-speechbrain contributors 2026
"""

import inspect
import random
from typing import Dict, Sequence, Tuple

import torch
from speechbrain.augment.time_domain import AddNoise


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
