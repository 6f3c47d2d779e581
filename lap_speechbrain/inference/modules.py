"""Small pieces the exported ``hyperparams.yaml`` is made of: pass-throughs and load hooks.

Authors
 * lap-speechbrain contributors 2026
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from torch import nn

from lap_speechbrain.data.audio import check_finite

# The settings of hyperparams.yaml besides the backend's that change what an
# embedding means (the audio it expects); recorded at export and checked at load.
RECORDED_SETTINGS = ("sample_rate", "min_audio_samples")


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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit its module; the message names it."""


def load_state_dict_strict(module: nn.Module, path: Union[str, Path]) -> None:
    """Pretrainer hook: weights-only, strict loading of a module's state dict.

    SpeechBrain's default transfer hook loads non-strictly and only logs
    missing keys, so a mismatched checkpoint would leave random weights; this
    hook fails instead (:class:`CheckpointError` naming the file), and never
    unpickles arbitrary objects.

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
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated (RuntimeError), or pickled objects (UnpicklingError)
        raise CheckpointError(f"{path}: not a readable state dict of tensors ({error})") from error
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} does not fit the model hyperparams.yaml builds: {error}") from error


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


class ModelConfigError(ValueError):
    """A model folder's ``hyperparams.yaml`` does not match what its weights were trained with."""


def config_sha256(config: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON-like mapping, independent of key order and of tuples versus lists.

    Example
    -------
    >>> config_sha256({"a": (1, 2), "b": 0.5}) == config_sha256({"b": 0.5, "a": [1, 2]})
    True
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def training_record(
    ssl_config: Mapping[str, Any], backend_config: Mapping[str, Any], settings: Mapping[str, Any]
) -> Dict[str, Any]:
    """What a model's weights were trained with: the content of ``trained_with.ckpt``.

    Arguments
    ---------
    ssl_config : mapping
        The SSL model's config as ``hyperparams.yaml`` holds it (recorded as a SHA-256).
    backend_config : mapping
        The encoder's ``backend_config`` (recorded as is, whatever its keys).
    settings : mapping
        The values of :data:`RECORDED_SETTINGS`.

    Returns
    -------
    dict
        ``{"ssl_config_sha256": ..., "backend": {...}, "settings": {...}}``, JSON values.

    Example
    -------
    >>> record = training_record({"model_type": "wavlm"}, {"layer_pooling": "max"}, {"min_audio_samples": 400})
    >>> record["backend"], record["settings"]
    ({'layer_pooling': 'max'}, {'min_audio_samples': 400})
    """
    return json.loads(json.dumps({
        "ssl_config_sha256": config_sha256(ssl_config),
        "backend": dict(backend_config),
        "settings": dict(settings),
    }))


class TrainingRecord:
    """The configuration a loaded ``hyperparams.yaml`` builds, to compare with ``trained_with.ckpt``.

    A Pretrainer loadable of the exported ``hyperparams.yaml``:
    :func:`check_training_record` (its load hook) refuses the model when
    ``hyperparams.yaml`` was edited away from what the weights were trained
    with (e.g. another ``layer_pooling``, whose weights have the same shapes,
    or ``min_audio_samples: 0``).

    Arguments
    ---------
    embedding_model : torch.nn.Module
        The ``SSLSpeakerEncoder`` built from the yaml (its ``backend_config``).
    ssl_config : mapping
        The yaml's ``ssl_config``.
    **settings
        The yaml's values of :data:`RECORDED_SETTINGS`.
    """

    def __init__(self, embedding_model: nn.Module, ssl_config: Mapping[str, Any], **settings: Any):
        self.embedding_model = embedding_model
        self.ssl_config = ssl_config
        self.settings = settings

    def found(self) -> Dict[str, Any]:
        """The :func:`training_record` of the loaded yaml."""
        return training_record(self.ssl_config, self.embedding_model.backend_config, self.settings)


def check_training_record(record: TrainingRecord, path: Union[str, Path]) -> None:
    """Pretrainer hook: refuses a ``hyperparams.yaml`` that differs from ``trained_with.ckpt``.

    Every recorded key is compared (keys a newer package version adds to the
    backend configuration are not in older records and are not compared).

    Arguments
    ---------
    record : TrainingRecord
        The loaded yaml's configuration.
    path : str or Path
        ``trained_with.ckpt`` (JSON) written at export.

    Raises
    ------
    ModelConfigError
        Naming the key, the recorded and the found value.
    """
    path = Path(path)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelConfigError(f"{path}: cannot read the record of what the weights were trained with ({error})") from error
    found = record.found()
    missing = object()
    mismatches = []
    if recorded.get("ssl_config_sha256") != found["ssl_config_sha256"]:
        mismatches.append(("ssl_config (SHA-256)", recorded.get("ssl_config_sha256"), found["ssl_config_sha256"]))
    for section in ("backend", "settings"):
        for key, value in sorted(dict(recorded.get(section) or {}).items()):
            now = found[section].get(key, missing)
            if now != value:
                mismatches.append((key, value, "nothing" if now is missing else now))
    if mismatches:
        listing = "; ".join(f"{key}: trained with {was!r}, hyperparams.yaml has {now!r}" for key, was, now in mismatches)
        raise ModelConfigError(
            f"{path.parent / 'hyperparams.yaml'} does not match the weights it loads ({listing}; recorded at "
            f"export in {path.name}): "
            "restore the recorded values, or export the model again"
        )
