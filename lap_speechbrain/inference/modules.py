"""Small pieces the exported ``hyperparams.yaml`` is made of: pass-throughs and load hooks.

Authors
 * lap-speechbrain contributors 2026
"""

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from torch import nn

from lap_speechbrain.data.audio import check_finite


class PassThrough(nn.Module):
    """Returns its first input; accepts and ignores lengths.

    ``EncoderClassifier.encode_batch`` calls ``compute_features(wavs)`` and
    ``mean_var_norm(feats, wav_lens)`` before ``embedding_model(feats,
    wav_lens)``. The SSL model inside ``embedding_model`` needs the raw
    waveform and its lengths, so both steps pass the waveform through.

    Example
    -------
    >>> wavs = torch.randn(2, 100)
    >>> bool((PassThrough()(wavs, torch.ones(2)) == wavs).all())
    True
    """

    def forward(self, x: torch.Tensor, *lengths: object) -> torch.Tensor:
        """Returns ``x`` unchanged."""
        return x


class FiniteWaveforms(PassThrough):
    """A :class:`PassThrough` that refuses NaN or infinite samples, naming the rows.

    Used as ``compute_features``, the first step of ``encode_batch``, so that
    ``EncoderClassifier.from_hparams`` models refuse non-finite audio too
    instead of returning NaN embeddings.

    Example
    -------
    >>> wavs = torch.zeros(2, 100)
    >>> wavs[1, 5] = float("inf")
    >>> FiniteWaveforms()(wavs)
    Traceback (most recent call last):
    ...
    lap_speechbrain.data.audio.NonFiniteError: encode_batch: row [1] of the batch holds NaN or infinite samples
    """

    def forward(self, x: torch.Tensor, *lengths: object) -> torch.Tensor:
        """Returns ``x`` (B, N) if all its samples are finite."""
        return check_finite(x, "encode_batch")


class EmbeddingMeanSubtraction(nn.Module):
    """Subtracts a fixed mean embedding (the training set's), or nothing.

    Used as ``mean_var_norm_emb``, which ``encode_batch(..., normalize=True)``
    applies; cosine scoring after subtracting the training-set mean is the
    paper's scoring (docs/lap_spec.md section 6).

    Arguments
    ---------
    mean : sequence of float or None
        The mean embedding; None leaves embeddings unchanged.

    Example
    -------
    >>> norm = EmbeddingMeanSubtraction([1.0, 2.0])
    >>> norm(torch.ones(1, 1, 2), torch.ones(1))
    tensor([[[ 0., -1.]]])
    """

    def __init__(self, mean: Optional[Sequence[float]] = None):
        super().__init__()
        self.register_buffer(
            "mean", None if mean is None else torch.tensor(mean, dtype=torch.float32)
        )

    def forward(self, embeddings: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 1, E) embeddings minus the mean."""
        if self.mean is None:
            return embeddings
        return embeddings - self.mean.to(embeddings.dtype)


def load_state_dict_strict(module: nn.Module, path: Union[str, Path]) -> None:
    """Pretrainer hook: weights-only, strict loading of a module's state dict.

    SpeechBrain's default transfer hook loads non-strictly and only logs
    missing keys, so a mismatched checkpoint would leave random weights; this
    hook fails instead, and never unpickles arbitrary objects.

    Arguments
    ---------
    module : torch.nn.Module
        The module to fill.
    path : str or Path
        Its checkpoint (a state dict saved with ``torch.save``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state_dict, strict=True)


def load_label_encoder(
    encoder: CategoricalEncoder, path: Union[str, Path], expected_count: Optional[int] = None
) -> None:
    """Pretrainer hook for the label encoder that refuses a missing or wrong file.

    SpeechBrain's default hook (``load_if_possible``) returns silently with an
    empty encoder when the file is missing.

    Arguments
    ---------
    encoder : CategoricalEncoder
        The encoder to fill.
    path : str or Path
        ``label_encoder.ckpt``.
    expected_count : int or None
        Number of classes of the classifier; checked when given.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: label encoder not found")
    encoder.load(path)
    if expected_count is not None and len(encoder) != expected_count:
        raise ValueError(
            f"{path}: {len(encoder)} labels, but the classifier has {expected_count} classes"
        )
