"""The verification run: embeddings, cosine, AS-Norm and AS-Norm + QMF on trial lists.

:func:`run_verification` is what ``recipes/speaker_verification.py`` calls;
it takes an embedding function, so any model (an exported
``EncoderClassifier``, an ``SSLSpeakerEncoder`` in training) can be scored.

Steps (docs/lap_spec.md section 6):

1. Read every trial list (format errors stop the run before any work) and
   check every audio file of the trials and the cohort (one error lists
   all missing or unreadable files).
2. Embed the cohort utterances (a training manifest, optionally at most
   ``cohort_utterances_per_speaker`` per speaker, drawn with ``seed``) and
   the trial utterances, once each, with the disk cache of
   :mod:`lap_speechbrain.scoring.embeddings`.
3. Subtract the training-set mean, length-normalise; the AS-Norm cohort is
   one mean embedding per training speaker; top-N statistics once per
   utterance.
4. QMF: pairs drawn from the cohort utterances, scored with AS-Norm against
   the cohort without the pair's speakers, fit a logistic regression on the
   nine quality features (or load a saved calibration).
5. Per trial list: cosine, AS-Norm and AS-Norm + QMF scores, EER and
   minDCFs, a DET plot; ``results.md`` and ``results.json`` for all lists.

Without a cohort manifest only cosine scoring (without mean subtraction)
is possible, and only that condition is reported.

Authors
 * lap-speechbrain contributors 2026
"""

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lap_speechbrain.data.manifest import read_csv
from lap_speechbrain.data.trials import Trials, read_trials
from lap_speechbrain.scoring.embeddings import (
    EmbeddingTable,
    EmbedFn,
    LoadFn,
    check_audio_files,
    extract_embeddings,
)
from lap_speechbrain.scoring.normalization import (
    as_norm,
    normalize_embeddings,
    speaker_cohort,
    top_n_stats,
    trial_scores,
)
from lap_speechbrain.scoring.qmf import (
    QMFCalibrator,
    embedding_quality,
    qmf_features,
    sample_training_pairs,
)
from lap_speechbrain.scoring.report import (
    Results,
    evaluate_scores,
    plot_det,
    write_results,
)

logger = logging.getLogger(__name__)

COSINE, AS_NORM, AS_NORM_QMF = "cosine", "AS-Norm", "AS-Norm + QMF"


def encoder_embedding_fn(encoder: torch.nn.Module) -> EmbedFn:
    """An ``embed(wavs, wav_lens) -> (B, E)`` function for a speaker encoder.

    Arguments
    ---------
    encoder : torch.nn.Module
        A SpeechBrain ``EncoderClassifier`` (``encode_batch`` is used) or a
        module whose forward maps ``(wavs, wav_lens)`` to (B, 1, E) or (B, E),
        such as :class:`lap_speechbrain.lobes.SSLSpeakerEncoder`.

    Returns
    -------
    callable
        The embedding function; the encoder is put in eval mode.
    """
    encoder.eval()
    forward = getattr(encoder, "encode_batch", encoder)

    def embed(wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        output = forward(wavs, wav_lens)
        return output.reshape(output.shape[0], -1)

    return embed


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of a model's parameters and buffers (names, dtypes, shapes, values).

    Part of the embedding-cache key, so embeddings of an older checkpoint
    saved under the same folder name are never reused.

    Arguments
    ---------
    model : torch.nn.Module
        The model.

    Returns
    -------
    str
        40 hex digits.

    Example
    -------
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> model_fingerprint(a) == model_fingerprint(b)
    True
    >>> with torch.no_grad():
    ...     b.bias += 1
    >>> model_fingerprint(a) == model_fingerprint(b)
    False
    """
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def select_cohort(
    rows: Sequence[Mapping[str, object]], per_speaker: Optional[int], seed: int
) -> List[Mapping[str, object]]:
    """At most ``per_speaker`` manifest rows per speaker, drawn with ``seed``.

    Arguments
    ---------
    rows : sequence of dict
        Manifest rows (``ID, duration, wav, spk_id``).
    per_speaker : int, optional
        Cap per speaker; None keeps every row.
    seed : int
        Seed of the draw.

    Returns
    -------
    list of dict
        The kept rows, in manifest order.

    Example
    -------
    >>> rows = [{"ID": str(i), "spk_id": "ab"[i % 2]} for i in range(6)]
    >>> sorted(row["spk_id"] for row in select_cohort(rows, 2, seed=0))
    ['a', 'a', 'b', 'b']
    """
    if per_speaker is None:
        return list(rows)
    rng = np.random.default_rng(seed)
    by_speaker: Dict[str, List[int]] = {}
    for index, row in enumerate(rows):
        by_speaker.setdefault(str(row["spk_id"]), []).append(index)
    kept: List[int] = []
    for speaker in sorted(by_speaker):
        indices = by_speaker[speaker]
        if len(indices) > per_speaker:
            indices = rng.choice(indices, size=per_speaker, replace=False).tolist()
        kept.extend(indices)
    return [rows[i] for i in sorted(kept)]


class CohortScorer:
    """Mean subtraction, the speaker-mean cohort and AS-Norm statistics.

    Arguments
    ---------
    table : EmbeddingTable
        Raw embeddings of the cohort (training) utterances.
    speakers : sequence of str
        Speaker of each row of ``table``.
    top_n : int
        AS-Norm top-N.
    chunk_size : int
        Utterances per chunk of the top-N computation.
    """

    def __init__(
        self, table: EmbeddingTable, speakers: Sequence[str], top_n: int, chunk_size: int
    ):
        self.mean = torch.as_tensor(table.embeddings).mean(dim=0)
        self.normalized = normalize_embeddings(table.embeddings, self.mean)
        self.cohort, names = speaker_cohort(self.normalized, speakers)
        self.speaker_row = {name: row for row, name in enumerate(names)}
        self.top_n = top_n
        self.chunk_size = chunk_size

    def stats(self, normalized: torch.Tensor, exclude=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-N statistics of (U, E) normalised embeddings."""
        return top_n_stats(normalized, self.cohort, self.top_n, self.chunk_size, exclude)


def fit_qmf(
    scorer: CohortScorer,
    table: EmbeddingTable,
    speakers: Sequence[str],
    num_pairs: int,
    seed: int,
    regularization: float,
    max_iter: int,
) -> QMFCalibrator:
    """Fits QMF on training pairs scored against a cohort without the pair's speakers.

    Arguments
    ---------
    scorer : CohortScorer
        Built on ``table``.
    table : EmbeddingTable
        Raw cohort-utterance embeddings and durations.
    speakers : sequence of str
        Speaker of each row of ``table``.
    num_pairs : int
        Training pairs (half target).
    seed : int
        Seed of the pair draw and the solver.
    regularization, max_iter
        Of the logistic regression.

    Returns
    -------
    QMFCalibrator
        The fitted calibration.
    """
    first, second, labels = sample_training_pairs(speakers, num_pairs, seed)
    rows = np.asarray([scorer.speaker_row[name] for name in speakers])
    exclude = torch.as_tensor(np.stack([rows[first], rows[second]], axis=1))
    first_stats = scorer.stats(scorer.normalized[first], exclude)
    second_stats = scorer.stats(scorer.normalized[second], exclude)
    scores = (scorer.normalized[first] * scorer.normalized[second]).sum(dim=1)
    normalized_scores = as_norm(scores, first_stats, second_stats)
    quality = embedding_quality(table.embeddings)
    features = qmf_features(
        normalized_scores,
        table.durations[first],
        table.durations[second],
        quality[first],
        quality[second],
    )
    return QMFCalibrator(regularization, max_iter, seed).fit(features, labels)


def run_verification(
    embed: EmbedFn,
    trial_lists: Mapping[str, Union[str, Path]],
    data_folder: Union[str, Path],
    output_folder: Union[str, Path],
    cache_key: str,
    cohort_csv: Optional[Union[str, Path]] = None,
    cohort_utterances_per_speaker: Optional[int] = None,
    top_n: int = 600,
    qmf_pairs: int = 30000,
    qmf_regularization: float = 1.0,
    qmf_max_iter: int = 1000,
    qmf_calibration: Optional[Union[str, Path]] = None,
    p_targets: Sequence[float] = (0.01, 0.05),
    as_norm_chunk_size: int = 4096,
    seed: int = 1234,
    extraction: Optional[Mapping[str, object]] = None,
    load: Optional[LoadFn] = None,
) -> Results:
    """Scores trial lists under cosine, AS-Norm and AS-Norm + QMF and writes the report.

    Arguments
    ---------
    embed : callable
        ``embed(wavs, wav_lens) -> (B, E)``, see :func:`encoder_embedding_fn`.
    trial_lists : mapping
        Name (e.g. ``"O"``) -> VoxCeleb-format trial list file; entries
        set to None are skipped (so a yaml override can drop a list).
    data_folder : str or Path
        Audio root the trial paths are relative to.
    output_folder : str or Path
        Gets ``results.md``, ``results.json``, ``run_info.json``,
        ``det_<name>.png``, ``qmf_calibration.json`` and the embedding cache
        ``embeddings/<key>/{trials,cohort}``.
    cache_key : str
        Identifies the model (e.g. its source and :func:`model_fingerprint`);
        embeddings are cached in ``embeddings/<sha1 of the key>/``.
    cohort_csv : str or Path, optional
        Training manifest (``ID,duration,wav,spk_id``); None: cosine only.
    cohort_utterances_per_speaker : int, optional
        Cap on cohort utterances per speaker (None: all).
    top_n : int
        AS-Norm top-N.
    qmf_pairs : int
        QMF training pairs (half target).
    qmf_regularization, qmf_max_iter
        Of the QMF logistic regression.
    qmf_calibration : str or Path, optional
        A saved calibration to apply instead of fitting a new one.
    p_targets : sequence of float
        minDCF priors.
    as_norm_chunk_size : int
        Utterances per chunk of the top-N computation.
    seed : int
        Seed of the cohort draw, the QMF pairs and the solver.
    extraction : mapping, optional
        Keyword arguments of :func:`extract_embeddings` (``batch_size``,
        ``max_batch_seconds``, ``max_chunk_seconds``, ``sample_rate``,
        ``device``).
    load : callable, optional
        Audio loader (default ``lap_speechbrain.inference.audio.load_audio``).

    Returns
    -------
    dict
        ``results[list][condition]`` metrics (also written to disk).
    """
    output_folder = Path(output_folder)
    extraction = dict(extraction or {})
    trial_lists = {name: path for name, path in trial_lists.items() if path is not None}
    if not trial_lists:
        raise ValueError("no trial lists given (every entry of trial_lists is null)")
    trials: Dict[str, Trials] = {name: read_trials(path) for name, path in trial_lists.items()}
    for trial_list in trials.values():
        if len(np.unique(trial_list.labels)) < 2:
            raise ValueError(
                f"trial list {trial_list.path} has only label {trial_list.labels[0]}: an EER "
                "needs both target (1) and non-target (0) trials"
            )
    utterances = sorted(set().union(*(t.utterances for t in trials.values())))
    trial_files = [(utt, os.path.join(data_folder, utt)) for utt in utterances]

    cohort_rows: List[Mapping[str, object]] = []
    if cohort_csv is not None:
        cohort_rows = select_cohort(
            read_csv(cohort_csv), cohort_utterances_per_speaker, seed
        )
        if not cohort_rows:
            raise ValueError(f"cohort manifest {cohort_csv} has no utterances")
    cohort_files = [(str(row["ID"]), str(row["wav"])) for row in cohort_rows]
    cohort_durations = [float(row["duration"]) for row in cohort_rows]
    speakers = [str(row["spk_id"]) for row in cohort_rows]
    # QMF pairs leave out their two speakers, so top_n must fit in S - 2.
    if cohort_rows and not 1 <= top_n <= len(set(speakers)) - 2:
        raise ValueError(
            f"top_n={top_n} does not fit the cohort of {len(set(speakers))} speakers in "
            f"{cohort_csv}: it must be between 1 and the number of speakers minus 2"
        )

    # Every file is checked before any embedding work starts.
    trial_durations = check_audio_files(trial_files)
    if cohort_rows:
        check_audio_files(cohort_files, cohort_durations)

    # One cache folder per model key: a retrained model never reuses stale embeddings.
    cache = output_folder / "embeddings" / hashlib.sha1(cache_key.encode()).hexdigest()[:12]
    table = extract_embeddings(
        trial_files, embed, cache / "trials", cache_key, durations=trial_durations,
        load=load, desc="Embedding trial utterances", **extraction,
    )
    conditions = [COSINE]
    if cohort_rows:
        cohort_table = extract_embeddings(
            cohort_files, embed, cache / "cohort", cache_key, durations=cohort_durations,
            load=load, desc="Embedding cohort utterances", **extraction,
        )
        scorer = CohortScorer(cohort_table, speakers, top_n, as_norm_chunk_size)
        normalized = normalize_embeddings(table.embeddings, scorer.mean)
        stats = scorer.stats(normalized)
        quality = embedding_quality(table.embeddings)
        if qmf_calibration is not None:
            calibrator = QMFCalibrator.load(qmf_calibration)
        else:
            calibrator = fit_qmf(
                scorer, cohort_table, speakers, qmf_pairs, seed, qmf_regularization, qmf_max_iter
            )
            calibrator.save(output_folder / "qmf_calibration.json")
        conditions += [AS_NORM, AS_NORM_QMF]
    else:
        logger.warning("No cohort manifest: only cosine scoring without mean subtraction.")
        normalized = normalize_embeddings(table.embeddings)

    results: Results = {}
    for name, trial_list in trials.items():
        enrol = table.rows(trial_list.enrol)
        test = table.rows(trial_list.test)
        scores = {COSINE: trial_scores(normalized, enrol, test)}
        if cohort_rows:
            scores[AS_NORM] = as_norm(
                scores[COSINE],
                (stats[0][enrol], stats[1][enrol]),
                (stats[0][test], stats[1][test]),
            )
            scores[AS_NORM_QMF] = calibrator.score(
                qmf_features(
                    scores[AS_NORM],
                    table.durations[enrol],
                    table.durations[test],
                    quality[enrol],
                    quality[test],
                )
            )
        results[name] = {
            condition: evaluate_scores(scores[condition], trial_list.labels, p_targets)
            for condition in conditions
        }
        plot_det(
            {condition: (scores[condition], trial_list.labels) for condition in conditions},
            output_folder / f"det_{name}.png",
            title=f"{name}: {len(trial_list)} trials",
        )
    write_results(
        results,
        output_folder,
        p_targets,
        run_info={
            "model": cache_key,
            "p_targets": list(p_targets),
            "trial_lists": {name: t.path for name, t in trials.items()},
            "num_trials": {name: len(t) for name, t in trials.items()},
            "cohort_csv": None if cohort_csv is None else str(cohort_csv),
            "cohort_utterances": len(cohort_rows),
            "top_n": top_n if cohort_rows else None,
        },
    )
    return results


def evaluate_model(model: str, settings: Mapping, device: str = "cpu") -> Results:
    """Loads a model and scores trial lists with the settings of ``hparams/verification.yaml``.

    ``recipes/speaker_verification.py`` calls it with its whole yaml, and the
    training recipe with the ``evaluation`` section of a training yaml, so
    both score the same way.

    Arguments
    ---------
    model : str
        An exported folder, a hub id or a training output folder.
    settings : mapping
        The keys of ``hparams/verification.yaml`` except ``model``
        (``trial_lists``, ``data_folder``, ``output_folder``,
        ``pretrained_savedir``, ``cohort_csv``, ``top_n``, ``qmf_pairs``, ...).
    device : str
        Where the model runs.

    Returns
    -------
    Results
        ``{list: {condition: metrics}}``, also written to ``output_folder``.
    """
    # Imported here: the inference package is only needed to load a model.
    from lap_speechbrain.inference import load_encoder

    encoder = load_encoder(model, savedir=settings["pretrained_savedir"], device=device)
    return run_verification(
        encoder_embedding_fn(encoder),
        trial_lists=settings["trial_lists"],
        data_folder=settings["data_folder"],
        output_folder=settings["output_folder"],
        cache_key=f"{model} {model_fingerprint(encoder)}",
        cohort_csv=settings["cohort_csv"],
        cohort_utterances_per_speaker=settings["cohort_utterances_per_speaker"],
        top_n=settings["top_n"],
        qmf_pairs=settings["qmf_pairs"],
        qmf_regularization=settings["qmf_regularization"],
        qmf_max_iter=settings["qmf_max_iter"],
        qmf_calibration=settings["qmf_calibration"],
        p_targets=settings["p_targets"],
        as_norm_chunk_size=settings["as_norm_chunk_size"],
        seed=settings["seed"],
        extraction={
            "batch_size": settings["batch_size"],
            "max_batch_seconds": settings["max_batch_seconds"],
            "max_chunk_seconds": settings["max_chunk_seconds"],
            "sample_rate": settings["sample_rate"],
            "device": device,
        },
    )
