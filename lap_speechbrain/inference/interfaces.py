"""Loading exported models: a SpeakerRecognition with the exported threshold, and load_encoder.

Authors
 * lap-speechbrain contributors 2026
"""

import json
import logging
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from ruamel.yaml import YAMLError
from speechbrain.inference.speaker import SpeakerRecognition
from speechbrain.utils.fetching import FetchConfig

from lap_speechbrain.data.audio import NonFiniteError, check_finite
from lap_speechbrain.fileio import atomic_write_json, remove_stale_temporaries
from lap_speechbrain.inference.audio import load_audio
from lap_speechbrain.scoring.embeddings import chunk_waveform

PathLike = Union[str, Path]
logger = logging.getLogger(__name__)

# A training output folder keeps its trained model, an exported folder, here.
TRAINED_MODEL_FOLDER = "model"
# Marks a folder that load_encoder made to hold links to a hub model's files.
SAVEDIR_MARKER = ".lap_speechbrain_savedir.json"


class LAPSpeakerRecognition(SpeakerRecognition):
    """SpeechBrain's ``SpeakerRecognition`` that decides with the exported threshold.

    Changes to SpeechBrain's class, everything else (``encode_batch``,
    ``classify_batch``) is SpeechBrain's:

    - ``verify_batch`` / ``verify_files`` decide with ``verification_threshold``
      from the model's ``hyperparams.yaml``, and accept when
      ``score >= threshold`` (the rule of :mod:`lap_speechbrain.scoring.metrics`,
      with which the threshold was calibrated; SpeechBrain uses ``>``).
    - Audio is read with :func:`~lap_speechbrain.inference.audio.load_audio`
      (any sample rate, stereo, clear errors, the model's minimum length).
    - ``verify_files`` and :meth:`encode_file` embed a file longer than
      ``max_chunk_seconds`` as the mean embedding of equal chunks, one chunk
      at a time, so memory does not grow with the file's length.
    - ``encode_batch(normalize=True)`` refuses a model that stores no
      training-set mean (SpeechBrain would return the raw embeddings).
    - A ``hyperparams.yaml`` that no longer matches the weights' record
      (``trained_with.ckpt``) is refused while loading
      (:func:`~lap_speechbrain.inference.modules.check_training_record`); a
      folder exported before the record existed loads with a logged warning.
    - NaN or infinite audio is refused with :class:`NonFiniteError` naming
      the file (or the row of a batch), and so is a non-finite embedding or
      score: no NaN score ever decides "different speakers".
    """

    HPARAMS_NEEDED = ["verification_threshold", "sample_rate", "min_audio_samples", "max_chunk_seconds"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.hparams, "trained_with", None) is None:
            # Exported before the record existed: loadable, but nothing checks its yaml.
            logger.warning(
                "this model has no trained_with record (exported by an earlier lap-speechbrain): its "
                "hyperparams.yaml cannot be checked against its weights; `lap-speechbrain export FOLDER NEW_FOLDER` "
                "adds the record"
            )

    @property
    def threshold(self) -> float:
        """The cosine threshold of ``verify_batch`` / ``verify_files``."""
        return float(self.hparams.verification_threshold)

    def load_audio(self, path: PathLike, savedir: Optional[PathLike] = None) -> torch.Tensor:
        """Reads a local audio file as a mono waveform at the model's rate.

        Arguments
        ---------
        path : str or Path
            The audio file (any sample rate, any channel count).
        savedir : None
            Unused; kept for SpeechBrain's signature.

        Returns
        -------
        torch.Tensor
            (N,) waveform on the model's device.
        """
        del savedir  # local files only
        waveform = load_audio(path, self.hparams.sample_rate, self.hparams.min_audio_samples)
        return waveform.to(self.device)

    def encode_batch(
        self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None, normalize: bool = False
    ) -> torch.Tensor:
        """SpeechBrain's ``encode_batch``; ``normalize`` needs a stored mean embedding.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms at 16 kHz.
        wav_lens : torch.Tensor or None
            (B,) relative lengths.
        normalize : bool
            Subtract the training-set mean embedding stored at export.

        Returns
        -------
        torch.Tensor
            (B, 1, E) embeddings.

        Raises
        ------
        NonFiniteError
            Naming the rows with NaN or infinite samples or embeddings.
        """
        self._check_normalize(normalize)
        check_finite(wavs, "encode_batch")
        embeddings = super().encode_batch(wavs, wav_lens, normalize=normalize)
        check_finite(embeddings.reshape(embeddings.shape[0], -1), "encode_batch: the model's embeddings", "values")
        return embeddings

    def encode_waveform(self, waveform: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embedding of one utterance, in chunks if it is longer than ``max_chunk_seconds``.

        The chunking rule is the verification recipe's
        (:func:`lap_speechbrain.scoring.embeddings.chunk_waveform`): a longer
        utterance is cut into ``ceil(duration / max_chunk_seconds)`` equal
        chunks and its embedding is the mean of theirs; the chunks are
        embedded one at a time.

        Arguments
        ---------
        waveform : torch.Tensor
            (N,) waveform at the model's sample rate.
        normalize : bool
            Subtract the stored training-set mean embedding.

        Returns
        -------
        torch.Tensor
            (1, 1, E) embedding.
        """
        max_seconds = self.hparams.max_chunk_seconds
        if max_seconds is None or waveform.numel() <= max_seconds * self.hparams.sample_rate:
            return self.encode_batch(waveform[None], normalize=normalize)
        self._check_normalize(normalize)
        chunks = chunk_waveform(waveform, int(max_seconds * self.hparams.sample_rate))
        embedding = torch.cat([self.encode_batch(chunk[None]) for chunk in chunks]).mean(dim=0, keepdim=True)
        if normalize:
            embedding = self.hparams.mean_var_norm_emb(embedding, torch.ones(1, device=self.device))
        return embedding

    def _check_normalize(self, normalize: bool) -> None:
        """Refuses ``normalize`` for a model that stores no mean embedding."""
        if normalize and self.hparams.embedding_mean is None:
            raise ValueError(
                "normalize: this model stores no training-set mean embedding "
                "(export it with --embedding-mean to store one)"
            )

    def encode_file(self, path: PathLike, normalize: bool = False) -> torch.Tensor:
        """Embedding of an audio file (:meth:`encode_waveform` of :meth:`load_audio`).

        Arguments
        ---------
        path : str or Path
            The audio file.
        normalize : bool
            Subtract the stored training-set mean embedding.

        Returns
        -------
        torch.Tensor
            (1, 1, E) embedding.

        Raises
        ------
        NonFiniteError
            Naming the file: NaN or infinite samples, or a non-finite embedding.
        """
        waveform = self.load_audio(path)
        try:
            return self.encode_waveform(waveform, normalize=normalize)
        except NonFiniteError as error:
            raise NonFiniteError(f"{path}: {error}") from error

    def verify_batch(
        self,
        wavs1: torch.Tensor,
        wavs2: torch.Tensor,
        wav1_lens: Optional[torch.Tensor] = None,
        wav2_lens: Optional[torch.Tensor] = None,
        threshold: Optional[float] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cosine scores and decisions, with the exported threshold by default.

        Arguments
        ---------
        wavs1, wavs2 : torch.Tensor
            (B, N) waveforms at 16 kHz.
        wav1_lens, wav2_lens : torch.Tensor or None
            Relative lengths (B,).
        threshold : float or None
            Overrides ``self.threshold``.

        Returns
        -------
        score : torch.Tensor
            (B, 1) cosine similarities.
        decision : torch.Tensor
            (B, 1) booleans, True (same speaker) when ``score >= threshold``.
        """
        threshold = self.threshold if threshold is None else threshold
        score, _ = super().verify_batch(wavs1, wavs2, wav1_lens, wav2_lens, threshold=threshold)
        check_finite(score.reshape(score.shape[0], -1), "verify_batch: the scores", "values")
        return score, score >= threshold

    def verify_files(
        self, path_x: PathLike, path_y: PathLike, threshold: Optional[float] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cosine score and decision for two audio files.

        Arguments
        ---------
        path_x, path_y : str or Path
            Audio files (any sample rate, any channel count, any length).
        threshold : float or None
            Overrides ``self.threshold``.

        Returns
        -------
        score : torch.Tensor
            (1,) cosine similarity.
        decision : torch.Tensor
            (1,) boolean, True (same speaker) when ``score >= threshold``.
        """
        threshold = self.threshold if threshold is None else threshold
        score = self.similarity(self.encode_file(path_x), self.encode_file(path_y))
        check_finite(score.reshape(-1), f"verify_files({path_x}, {path_y}): the score", "values")
        return score[0], score[0] >= threshold


def load_encoder(
    source: PathLike, savedir: Optional[PathLike] = None, device: str = "cpu"
) -> LAPSpeakerRecognition:
    """Loads an exported folder, a training output folder or a hub id.

    A local folder is read in place and nothing is written: an exported
    folder, or a training output folder (its ``model/`` subfolder, the export
    that training writes at its end). ``savedir`` only applies to hub ids.

    Arguments
    ---------
    source : str or Path
        Exported folder, training output folder or hub id (``user/repo``).
    savedir : str or Path or None
        For a hub id: a folder where SpeechBrain links the model's files. It
        must be new, empty, or an earlier ``savedir`` of ``load_encoder``
        (which it marks); the links are renewed on every load, so it always
        holds the model it was last loaded with. None: the files are read from
        the Hugging Face cache. Ignored for local folders.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

    Returns
    -------
    LAPSpeakerRecognition
        An ``EncoderClassifier`` (``encode_batch``, ``classify_batch``) that
        also verifies (``verify_files``, ``verify_batch``).

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a folder that holds no model.
    ValueError
        A ``savedir`` that holds files ``load_encoder`` did not put there, a
        ``hyperparams.yaml`` that is not valid yaml or lacks keys, a
        checkpoint that cannot be read or does not fit, or a
        ``hyperparams.yaml`` that differs from what the weights were trained
        with (:class:`~lap_speechbrain.inference.modules.ModelConfigError`).
    """
    run_opts = {"device": device}
    folder = Path(source)
    if folder.is_dir():
        return _from_hparams(str(model_folder(folder)), run_opts=run_opts)
    if _looks_like_a_path(str(source)):
        raise FileNotFoundError(f"{source}: no such model folder (and not a hub id 'user/repo')")
    try:
        if savedir is None:
            return _from_hparams(str(source), run_opts=run_opts)
        savedir = claim_savedir(savedir, str(source))
        # overwrite: re-link every file, so the folder never serves files of another model.
        return _from_hparams(
            str(source), savedir=str(savedir), run_opts=run_opts, fetch_config=FetchConfig(overwrite=True)
        )
    except OSError as error:  # huggingface_hub's errors do not say which model they were fetching
        raise type(error)(f"{source}: cannot load this hub model: {error}") from error


def _from_hparams(source: str, **kwargs) -> LAPSpeakerRecognition:
    """``LAPSpeakerRecognition.from_hparams``, with an error naming a damaged ``hyperparams.yaml``."""
    try:
        return LAPSpeakerRecognition.from_hparams(source=source, **kwargs)
    except (YAMLError, KeyError) as error:  # unparsable, or cut short (e.g. no `pretrainer`)
        detail = f"lacks the key {error}" if isinstance(error, KeyError) else f"is not valid yaml: {error}"
        raise ValueError(f"{source}: its hyperparams.yaml {detail}") from error


def model_folder(folder: PathLike) -> Path:
    """The model folder of an exported folder or of a training output folder.

    Arguments
    ---------
    folder : str or Path
        An exported folder (``hyperparams.yaml`` and checkpoints) or a
        training output folder (its trained model in ``model/``).

    Returns
    -------
    Path
        The folder that ``from_hparams`` loads.

    Raises
    ------
    FileNotFoundError
        Naming the folder and what it lacks.
    """
    folder = Path(folder)
    trained = folder / TRAINED_MODEL_FOLDER
    if (trained / "hyperparams.yaml").is_file():
        return trained
    if (folder / "save").is_dir():
        raise FileNotFoundError(
            f"{folder} is a training output folder without {TRAINED_MODEL_FOLDER}/: training writes "
            "its model there when it finishes"
        )
    if (folder / "hyperparams.yaml").is_file():
        return folder
    raise FileNotFoundError(
        f"{folder} is neither an exported model folder (no hyperparams.yaml) nor a training output "
        f"folder (no {TRAINED_MODEL_FOLDER}/hyperparams.yaml)"
    )


def claim_savedir(savedir: PathLike, source: str) -> Path:
    """Checks that ``savedir`` may hold links to ``source``'s files, and marks it.

    Arguments
    ---------
    savedir : str or Path
        New, empty, or marked by an earlier call.
    source : str
        The hub id whose files it will hold.

    Returns
    -------
    Path
        ``savedir``.

    Raises
    ------
    ValueError
        If ``savedir`` is a file or holds files that ``load_encoder`` did not put there.
    """
    savedir = Path(savedir)
    marker = savedir / SAVEDIR_MARKER
    if savedir.exists() and not savedir.is_dir():
        raise ValueError(f"savedir {savedir} is a file, not a folder")
    # A load killed while marking the folder left the marker's temporary, and nothing else.
    remove_stale_temporaries(savedir, [SAVEDIR_MARKER], existing=False)
    if savedir.is_dir() and any(savedir.iterdir()) and not marker.is_file():
        raise ValueError(
            f"savedir {savedir} is not empty and was not made by load_encoder: its files would be "
            "replaced by links to the model's; give a new or empty folder"
        )
    try:
        previous = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing (a new or empty folder) or damaged: written anew below
        previous = None
    if not isinstance(previous, dict) or previous.get("source") != source:
        atomic_write_json(marker, {"source": source})
        logger.info("savedir %s now holds the files of %s", savedir, source)
    return savedir


def _looks_like_a_path(source: str) -> bool:
    """Whether ``source`` names a local path rather than a hub id ``user/repo``."""
    return source.startswith(("/", ".", "~")) or source.count("/") != 1 or "\\" in source
