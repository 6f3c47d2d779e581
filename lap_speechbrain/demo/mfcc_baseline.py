"""A no-training speaker-verification baseline: per-utterance MFCC statistics scored by cosine.

Each utterance becomes the mean and standard deviation of its MFCCs over
time; every dimension is then standardised over the utterances being scored
(unsupervised, so no speaker label is used). The cosine of two such vectors
is the baseline score. It is what "speaker identity from average spectral
shape" achieves without learning anything, the yardstick a trained model on
the synthetic corpus must clearly beat.

Authors
 * lap-speechbrain contributors 2026
"""

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import soundfile
import torch
from speechbrain.lobes.features import MFCC
from tqdm import tqdm

SAMPLE_RATE = 16000
NUM_MFCC = 20


def mfcc_baseline_embeddings(paths: Sequence[Union[str, Path]], desc: str = "MFCC baseline") -> np.ndarray:
    """Per-utterance MFCC mean and standard deviation, standardised over ``paths``.

    Arguments
    ---------
    paths : sequence of str or Path
        16 kHz mono audio files.
    desc : str
        Progress-bar label (``""`` hides the bar).

    Returns
    -------
    np.ndarray
        (len(paths), 2 * NUM_MFCC) float64 embeddings; score pairs by cosine.

    Raises
    ------
    ValueError
        If a file is not 16 kHz mono.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(str(getfixture("tmpdir")))
    >>> rng = np.random.default_rng(0)
    >>> for name in ("a.wav", "b.wav"):
    ...     soundfile.write(folder / name, rng.standard_normal(8000) * 0.1, SAMPLE_RATE)
    >>> mfcc_baseline_embeddings([folder / "a.wav", folder / "b.wav"], desc="").shape
    (2, 40)
    """
    features = MFCC(n_mfcc=NUM_MFCC, deltas=False, context=False, sample_rate=SAMPLE_RATE)
    stats = []
    threads = torch.get_num_threads()
    # One utterance is a tiny job: worker threads cost more than they save, and
    # on a busy machine they make it a hundred times slower.
    torch.set_num_threads(1)
    try:
        for path in tqdm(paths, desc=desc, disable=not desc or None):
            audio, rate = soundfile.read(str(path), dtype="float32")
            if rate != SAMPLE_RATE or audio.ndim != 1:
                raise ValueError(
                    f"{path}: expected 16 kHz mono audio, got {rate} Hz with shape {audio.shape}"
                )
            with torch.no_grad():
                mfcc = features(torch.from_numpy(audio)[None])[0].double().numpy()  # (frames, NUM_MFCC)
            stats.append(np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)]))
    finally:
        torch.set_num_threads(threads)
    stats = np.stack(stats)
    return (stats - stats.mean(axis=0)) / (stats.std(axis=0) + 1e-8)
