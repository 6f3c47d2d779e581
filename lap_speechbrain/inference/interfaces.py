"""Loading exported models: a SpeakerRecognition with the calibrated threshold, and load_encoder.

Authors
 * lap-speechbrain contributors 2026
"""

import hashlib
import os
from pathlib import Path
from typing import Optional, Union

import torch
from speechbrain.inference.speaker import SpeakerRecognition

from lap_speechbrain.inference.audio import load_audio

PathLike = Union[str, Path]


class LAPSpeakerRecognition(SpeakerRecognition):
    """SpeechBrain's ``SpeakerRecognition`` that decides with the exported threshold.

    ``SpeakerRecognition.verify_batch`` compares the cosine with a fixed
    default of 0.25, and ``verify_files`` cannot pass another one. This
    subclass reads ``verification_threshold`` from the model's
    ``hyperparams.yaml`` (calibrated at export), and reads audio with
    :func:`~lap_speechbrain.inference.audio.load_audio` (any sample rate,
    stereo, clear errors, the model's minimum length). Everything else,
    including ``encode_batch``, is SpeechBrain's.
    """

    HPARAMS_NEEDED = ["verification_threshold", "sample_rate", "min_audio_samples"]

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

    def verify_batch(
        self,
        wavs1: torch.Tensor,
        wavs2: torch.Tensor,
        wav1_lens: Optional[torch.Tensor] = None,
        wav2_lens: Optional[torch.Tensor] = None,
        threshold: Optional[float] = None,
    ):
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
            (B, 1) booleans, True for the same speaker.
        """
        threshold = self.threshold if threshold is None else threshold
        return super().verify_batch(wavs1, wavs2, wav1_lens, wav2_lens, threshold=threshold)


def load_encoder(
    source: PathLike, savedir: Optional[PathLike] = None, device: str = "cpu"
) -> LAPSpeakerRecognition:
    """Loads an exported folder, a hub id, or a training output folder.

    A training output folder (``recipes/train_speaker_embeddings.py``'s
    ``output_folder``) is exported first, into ``savedir`` or a cache folder
    named after the checkpoint files, and the export is reused until the
    training run writes newer files.

    Arguments
    ---------
    source : str or Path
        Exported folder, hub id (``user/repo``) or training output folder.
    savedir : str or Path or None
        Where SpeechBrain links/copies the files (hub ids), or where a training
        output folder is exported.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

    Returns
    -------
    LAPSpeakerRecognition
        An ``EncoderClassifier`` (``encode_batch``, ``classify_batch``) that
        also verifies (``verify_files``, ``verify_batch``).
    """
    run_opts = {"device": device}
    folder = Path(source)
    # A training output folder also holds a hyperparams.yaml (the training
    # yaml), so it is recognised by its trained-model artifact; a folder with
    # neither gets find_artifact's error saying what it lacks.
    if folder.is_dir() and (_is_training_output(folder) or not (folder / "hyperparams.yaml").is_file()):
        from lap_speechbrain.export.folder import export_training_output, find_artifact

        artifact = find_artifact(folder)
        exported = Path(savedir) if savedir is not None else _cache_folder(artifact)
        hyperparams = exported / "hyperparams.yaml"
        # Re-export when the training run has written newer checkpoints since.
        if not hyperparams.is_file() or any(
            path.stat().st_mtime_ns > hyperparams.stat().st_mtime_ns for path in artifact.iterdir()
        ):
            export_training_output(folder, exported, overwrite=hyperparams.is_file())
        return LAPSpeakerRecognition.from_hparams(source=str(exported), run_opts=run_opts)
    return LAPSpeakerRecognition.from_hparams(
        source=str(source), savedir=None if savedir is None else str(savedir), run_opts=run_opts
    )


def _is_training_output(folder: Path) -> bool:
    """Whether ``folder`` is a training output folder (or its ``save/model``)."""
    from lap_speechbrain.export.folder import ExportError, find_artifact

    try:
        find_artifact(folder)
    except ExportError:
        return False
    return True


def _cache_folder(artifact: Path) -> Path:
    """A cache folder keyed by the artifact's path, file sizes and times."""
    key = hashlib.sha1(str(artifact.resolve()).encode())
    for path in sorted(artifact.iterdir()):
        stat = path.stat()
        key.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "lap_speechbrain" / "exported" / key.hexdigest()[:16]
