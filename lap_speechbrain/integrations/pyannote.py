"""A LAP model as the speaker embedding of pyannote.audio's diarization pipelines.

pyannote.audio 4.x cannot load SpeechBrain models by name under SpeechBrain
1.1: its ``PretrainedSpeakerEmbedding`` routes to its SpeechBrain wrapper only
for sources containing "speechbrain", then passes ``token=`` and a
``torch.device`` that ``EncoderClassifier.from_hparams`` rejects, and it
collects every SpeechBrain model into one shared ``<cache_dir>/speechbrain``
folder. Its pipelines do accept a pyannote ``Model`` instance as
``embedding`` (wrapped in pyannote's own inference class), so
:class:`LAPPyannoteEmbedding` is such a ``Model``: it loads the exported
folder or hub id with :func:`lap_speechbrain.inference.load_encoder`, into a
folder of its own, and embeds the masked audio with SpeechBrain's
``encode_batch``.

Usage (the README's "Use with pyannote.audio" has the whole recipe)::

    from pyannote.audio.pipelines import SpeakerDiarization
    from lap_speechbrain.integrations.pyannote import LAPPyannoteEmbedding

    pipeline = SpeakerDiarization(
        segmentation={"checkpoint": "pyannote/speaker-diarization-community-1",
                      "subfolder": "segmentation"},
        embedding=LAPPyannoteEmbedding("<user>/lap-wavlm-large"),
        clustering="AgglomerativeClustering",
        token="hf_...",
    )

Authors
 * lap-speechbrain contributors 2026
"""

import hashlib
import re
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from lap_speechbrain.inference import load_encoder

try:
    from pyannote.audio import Model
except ImportError as error:
    raise ImportError(
        "lap_speechbrain.integrations.pyannote needs pyannote.audio 4.x: "
        "pip install \"lap_speechbrain[pyannote]\""
    ) from error

PathLike = Union[str, Path]


def model_folder(source: PathLike, cache_dir: Optional[PathLike]) -> Optional[Path]:
    """The folder of its own that one model's files are collected into.

    Arguments
    ---------
    source : str or Path
        Exported folder, training output folder or hub id.
    cache_dir : str or Path or None
        Parent folder of the per-model folders; None keeps SpeechBrain's
        defaults (a hub model stays in its own Hugging Face cache folder, a
        local folder is read in place).

    Returns
    -------
    Path or None
        ``<cache_dir>/<name>-<hash of the source>``, or None without ``cache_dir``.

    Example
    -------
    >>> model_folder("lap-org/lap-wavlm", "cache").name
    'lap-wavlm-a3a70bdfd7b7'
    >>> model_folder("lap-org/lap-wavlm", "cache") != model_folder("other/lap-wavlm", "cache")
    True
    """
    if cache_dir is None:
        return None
    # A local folder is keyed by its absolute path: "./m" and "/abs/m" are one
    # model, two folders with the same name are two.
    key = str(Path(source).resolve()) if Path(source).exists() else str(source)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(key).name) or "model"
    return Path(cache_dir) / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


class LAPPyannoteEmbedding(Model):
    """A LAP speaker-embedding model that pyannote.audio pipelines take as ``embedding``.

    ``SpeakerDiarization(embedding=LAPPyannoteEmbedding(source), ...)`` wraps
    it in pyannote's ``PyannoteAudioPretrainedSpeakerEmbedding``, which calls
    ``forward(waveforms, weights=masks)`` with the segmentation's per-speaker
    frame masks. The kept samples of each row (mask > 0.5, frames stretched to
    samples as pyannote's SpeechBrain wrapper does) are concatenated and
    embedded with ``encode_batch`` in one padded batch, so each embedding
    equals ``encode_batch`` on that row's masked audio alone.

    Short input, the one rule pyannote expects: a masked row with fewer than
    ``min_num_samples`` kept samples (the SSL model's receptive field) gets a
    NaN embedding, which pyannote's clustering skips; unmasked input shorter
    than that raises ``RuntimeError``, which pyannote's own minimum-length
    search expects.

    Arguments
    ---------
    source : str or Path
        Exported folder, hub id (``user/repo``) or training output folder
        (exported first, see :func:`~lap_speechbrain.inference.load_encoder`).
    device : str or torch.device or None
        Where the model runs (default CPU). Inside a pipeline, move it with
        ``pipeline.to(torch.device(...))`` as any pyannote model.
    cache_dir : str or Path or None
        Parent of the folder of its own that this model's files are collected
        into (see :func:`model_folder`); two models never share one.

    Attributes
    ----------
    encoder : lap_speechbrain.inference.LAPSpeakerRecognition
        The loaded SpeechBrain interface.
    """

    def __init__(
        self,
        source: PathLike,
        device: Optional[Union[str, torch.device]] = None,
        cache_dir: Optional[PathLike] = None,
    ):
        device = torch.device("cpu" if device is None else device)
        encoder = load_encoder(source, savedir=model_folder(source, cache_dir), device=str(device))
        super().__init__(sample_rate=int(encoder.hparams.sample_rate), num_channels=1)
        self.source = str(source)
        self.encoder = encoder
        self.eval()

    @property
    def sample_rate(self) -> int:
        """Sample rate the model expects (Hz)."""
        return int(self.encoder.hparams.sample_rate)

    @property
    def dimension(self) -> int:
        """Size of an embedding."""
        return int(self.encoder.hparams.embedding_dim)

    @property
    def metric(self) -> str:
        """How embeddings compare: the model is trained and scored with cosine."""
        return "cosine"

    @property
    def min_num_samples(self) -> int:
        """Fewest samples embedded: the receptive field stored in the exported model."""
        return int(self.encoder.hparams.min_audio_samples)

    def _apply(self, fn, *args, **kwargs):
        # encode_batch moves its inputs to the device string SpeechBrain stored
        # at load time, so keep it in step when pyannote moves the model.
        super()._apply(fn, *args, **kwargs)
        self.encoder.device = str(next(self.encoder.parameters()).device)
        return self

    def forward(self, waveforms: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embeds each row, or each row's masked samples.

        Arguments
        ---------
        waveforms : torch.Tensor
            (B, 1, N) mono waveforms at :attr:`sample_rate`.
        weights : torch.Tensor or None
            (B, F) frame masks spread evenly over the N samples; samples of
            frames with a mask > 0.5 are kept. None keeps every sample.

        Returns
        -------
        torch.Tensor
            (B, dimension) embeddings; NaN rows where fewer than
            :attr:`min_num_samples` samples are kept.

        Raises
        ------
        RuntimeError
            Without ``weights``, when N is below :attr:`min_num_samples`.
        """
        batch_size, channels, num_samples = waveforms.shape
        if channels != 1:
            raise ValueError(f"expected mono waveforms (B, 1, N), got shape {tuple(waveforms.shape)}")
        waveforms = waveforms[:, 0]
        if weights is None:
            if num_samples < self.min_num_samples:
                raise RuntimeError(
                    f"{num_samples} samples is shorter than the model's receptive field "
                    f"({self.min_num_samples} samples)"
                )
            return self.encoder.encode_batch(waveforms)[:, 0]
        keep = F.interpolate(weights[:, None].float(), size=num_samples, mode="nearest")[:, 0] > 0.5
        lengths = keep.sum(dim=1)
        embeddings = torch.full((batch_size, self.dimension), float("nan"), device=waveforms.device)
        rows = (lengths >= self.min_num_samples).nonzero()[:, 0]
        if len(rows):
            signals = pad_sequence([waveforms[row][keep[row]] for row in rows], batch_first=True)
            relative = lengths[rows].float() / lengths[rows].max()
            embeddings[rows] = self.encoder.encode_batch(signals, relative)[:, 0].to(embeddings)
        return embeddings
