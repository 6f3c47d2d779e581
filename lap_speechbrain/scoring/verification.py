"""The verification run: embeddings, cosine, AS-Norm and AS-Norm + QMF on trial lists.

:func:`run_verification` is what both recipes call (``recipes/speaker_verification.py``
and the evaluation step of ``recipes/train_speaker_embeddings.py``), with
the keys of their yaml as its keyword arguments. It takes an embedding
function and an audio loader, so any model (an exported
``EncoderClassifier``, an ``SSLSpeakerEncoder`` in training) can be scored.

Steps (docs/lap_spec.md section 6; :mod:`lap_speechbrain.scoring.protocol`
for what the ``default`` and ``reference`` protocols do differently):

1. Read every trial list (format errors stop the run before any work) and
   check every audio file of the trials and the cohort (one error lists
   all missing or unreadable files).
2. Embed the cohort utterances (a training manifest, optionally at most
   ``cohort_utterances_per_speaker`` per speaker, drawn with ``seed``) and
   the trial utterances, once each, with the disk cache of
   :mod:`lap_speechbrain.scoring.embeddings` (keyed by the model and by each
   audio file's identity).
3. Subtract the mean raw embedding of the cohort utterances, length-normalise;
   the AS-Norm cohort is one mean embedding per training speaker; top-N
   statistics once per utterance. A ``top_n`` larger than the cohort allows
   (speakers minus the two a QMF pair leaves out) is lowered to that, with
   a logged note.
4. QMF: pairs drawn from the cohort utterances, scored with AS-Norm against
   the cohort without the pair's speakers, fit a logistic regression on the
   nine quality features (or load a saved calibration).
5. Per trial list: cosine, AS-Norm and AS-Norm + QMF scores, EER and
   minDCFs, a DET plot; ``results.md`` and ``results.json`` for all lists,
   ``run_info.json`` with the protocol, the model, the data folder and the
   trial lists (resolved paths and SHA-1 of their contents) actually scored.

Without a cohort manifest only cosine scoring (without mean subtraction)
is possible, and only that condition is reported.

Under ``torchrun`` (torch.distributed's process group initialised) step 2
is shared by all processes (:mod:`lap_speechbrain.scoring.embeddings`) and
steps 3-5 run on the main process only, which writes every file.

Authors
 * lap-speechbrain contributors 2026
"""

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from speechbrain.utils.distributed import if_main_process

from lap_speechbrain.data.manifest import read_csv
from lap_speechbrain.data.trials import Trials, read_trials
from lap_speechbrain.fileio import remove_stale_temporaries
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
from lap_speechbrain.scoring.protocol import ScoringProtocol, get_protocol
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

PathLike = Union[str, Path]
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


def file_name_part(name: str) -> str:
    """A trial-list name made safe as part of a file name (no path separators).

    Example
    -------
    >>> file_name_part("../../etc/O list")
    '.._.._etc_O_list'
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _sha1(path: PathLike) -> str:
    """SHA-1 of a file's contents."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    protocol : ScoringProtocol
        How the speaker embeddings and the std are made.
    """

    def __init__(
        self,
        table: EmbeddingTable,
        speakers: Sequence[str],
        top_n: int,
        chunk_size: int,
        protocol: ScoringProtocol,
    ):
        self.mean = table.embeddings.mean(axis=0, dtype=np.float64)
        self.normalized = normalize_embeddings(table.embeddings, self.mean)
        members = table.embeddings - self.mean if protocol.speaker_means_of_raw else self.normalized
        self.cohort, names = speaker_cohort(members, speakers)
        self.speaker_row = {name: row for row, name in enumerate(names)}
        self.top_n = top_n
        self.chunk_size = chunk_size
        self.correction = protocol.std_correction

    def stats(self, normalized: np.ndarray, exclude=None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-N statistics of (U, E) normalised embeddings."""
        return top_n_stats(
            normalized, self.cohort, self.top_n, self.chunk_size, exclude, self.correction
        )


def fit_qmf(
    scorer: CohortScorer,
    table: EmbeddingTable,
    speakers: Sequence[str],
    num_pairs: int,
    seed: int,
    regularization: float,
    max_iter: int,
    protocol: ScoringProtocol,
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
    protocol : ScoringProtocol
        How pairs are drawn and the regression is fitted.

    Returns
    -------
    QMFCalibrator
        The fitted calibration.
    """
    first, second, labels = sample_training_pairs(
        speakers, num_pairs, seed, nontargets_by=protocol.nontargets_by
    )
    rows = np.asarray([scorer.speaker_row[name] for name in speakers])
    exclude = np.stack([rows[first], rows[second]], axis=1)
    first_stats = scorer.stats(scorer.normalized[first], exclude)
    second_stats = scorer.stats(scorer.normalized[second], exclude)
    scores = trial_scores(scorer.normalized, first, second)
    quality = embedding_quality(table.embeddings)
    features = qmf_features(
        as_norm(scores, first_stats, second_stats),
        table.durations[first],
        table.durations[second],
        quality[first],
        quality[second],
    )
    calibrator = QMFCalibrator(
        regularization, max_iter, seed, protocol.qmf_solver, protocol.qmf_standardize
    )
    return calibrator.fit(features, labels)


def _usable_top_n(top_n: int, num_speakers: int, cohort_csv: PathLike) -> int:
    """``top_n``, lowered (with a logged note) to what the cohort allows."""
    # QMF pairs leave out their two speakers, so top_n must fit in S - 2.
    limit = num_speakers - 2
    if limit < 1:
        raise ValueError(
            f"cohort manifest {cohort_csv} has {num_speakers} speakers; AS-Norm with QMF "
            "needs at least 3 (or leave cohort_csv unset for cosine scoring only)"
        )
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if top_n > limit:
        logger.warning(
            "top_n=%d is more than the cohort of %d speakers in %s allows; using top_n=%d "
            "(the speakers minus the 2 that a QMF training pair leaves out)",
            top_n, num_speakers, cohort_csv, limit,
        )
        return limit
    return top_n


def run_verification(
    embed: EmbedFn,
    load: LoadFn,
    cache_key: str,
    trial_lists: Mapping[str, Optional[PathLike]],
    data_folder: PathLike,
    output_folder: PathLike,
    model: Optional[str] = None,
    protocol: str = "default",
    cohort_csv: Optional[PathLike] = None,
    cohort_utterances_per_speaker: Optional[int] = None,
    top_n: int = 600,
    qmf_pairs: int = 30000,
    qmf_regularization: float = 1.0,
    qmf_max_iter: int = 1000,
    qmf_calibration: Optional[PathLike] = None,
    p_targets: Sequence[float] = (0.01, 0.05),
    as_norm_chunk_size: int = 4096,
    seed: int = 1234,
    batch_size: int = 16,
    max_batch_seconds: float = 600.0,
    max_chunk_seconds: Optional[float] = None,
    num_workers: int = 0,
    sample_rate: int = 16000,
    device: Union[str, torch.device] = "cpu",
) -> Optional[Results]:
    """Scores trial lists under cosine, AS-Norm and AS-Norm + QMF and writes the report.

    Arguments
    ---------
    embed : callable
        ``embed(wavs, wav_lens) -> (B, E)``, see :func:`encoder_embedding_fn`.
    load : callable
        ``load(path) -> (N,) float tensor`` at ``sample_rate`` (e.g.
        ``functools.partial(lap_speechbrain.inference.load_audio,
        target_sample_rate=16000)``).
    cache_key : str
        Identifies the model actually loaded (e.g. :func:`model_fingerprint`);
        embeddings are cached in ``embeddings/<hash of the key and settings>/``.
    trial_lists : mapping
        Name (e.g. ``"O"``) -> VoxCeleb-format trial list file; entries
        set to None are skipped (so a yaml override can drop a list).
    data_folder : str or Path
        Audio root the trial paths are relative to.
    output_folder : str or Path
        Gets ``results.md``, ``results.json``, ``run_info.json``,
        ``det_<name>.png``, ``qmf_calibration.json`` and the embedding cache.
    model : str, optional
        Where the model came from (folder or hub id), for ``run_info.json``.
    protocol : str
        ``"default"`` or ``"reference"`` (:mod:`lap_speechbrain.scoring.protocol`).
    cohort_csv : str or Path, optional
        Training manifest (``ID,duration,wav,spk_id``); None: cosine only.
    cohort_utterances_per_speaker : int, optional
        Cap on cohort utterances per speaker (None: all).
    top_n : int
        AS-Norm top-N (lowered, with a logged note, to the cohort's speakers minus 2).
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
    batch_size, max_batch_seconds, max_chunk_seconds, num_workers
        Of :func:`~lap_speechbrain.scoring.embeddings.extract_embeddings`.
    sample_rate : int
        Sample rate of the loaded audio.
    device : str or torch.device
        Where the waveforms are sent.

    Returns
    -------
    dict or None
        ``results[list][condition]`` metrics (also written to disk); None on
        the other processes of a group, which only embed.
    """
    scoring = get_protocol(protocol)
    if scoring.whole_cohort and (cohort_utterances_per_speaker is not None or max_chunk_seconds is not None):
        raise ValueError(
            f"protocol {protocol!r} embeds every utterance whole, as the reference does: set "
            "cohort_utterances_per_speaker and max_chunk_seconds to null (or use protocol: default)"
        )
    output_folder = Path(output_folder)
    trial_lists = {name: path for name, path in trial_lists.items() if path is not None}
    if not trial_lists:
        raise ValueError("no trial lists given (every entry of trial_lists is null)")
    # A list's name only ever names a file inside output_folder.
    plots = {name: output_folder / f"det_{file_name_part(str(name))}.png" for name in trial_lists}
    if len(set(plots.values())) < len(plots):
        raise ValueError(f"trial-list names {list(plots)} give the same DET plot file names; rename them")
    # Temporaries of the files this function writes, left by a killed run.
    outputs = ["results.md", "results.json", "run_info.json", "qmf_calibration.json", *(p.name for p in plots.values())]
    for path in remove_stale_temporaries(output_folder, outputs):
        logger.info("Removed %s, left by an interrupted run", path)
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
    usable_top_n = _usable_top_n(top_n, len(set(speakers)), cohort_csv) if cohort_rows else None

    # Every file is checked before any embedding work starts.
    trial_durations = check_audio_files(trial_files)
    if cohort_rows:
        check_audio_files(cohort_files, cohort_durations)

    # One cache per model and embedding settings; its entries are keyed by each
    # audio file's identity, so another data folder or a changed file is embedded anew.
    cache_meta = {"key": cache_key, "sample_rate": sample_rate, "max_chunk_seconds": max_chunk_seconds}
    cache = output_folder / "embeddings" / hashlib.sha1(
        json.dumps(cache_meta, sort_keys=True).encode()
    ).hexdigest()[:12]
    extraction = dict(
        embed=embed, load=load, cache_dir=cache, cache_key=cache_key, batch_size=batch_size,
        max_batch_seconds=max_batch_seconds, max_chunk_seconds=max_chunk_seconds,
        sample_rate=sample_rate, device=device, num_workers=num_workers,
    )
    table = extract_embeddings(
        trial_files, durations=trial_durations, desc="Embedding trial utterances", **extraction
    )
    if cohort_rows:
        cohort_table = extract_embeddings(
            cohort_files, durations=cohort_durations, desc="Embedding cohort utterances", **extraction
        )
    if not if_main_process():
        return None
    conditions = [COSINE]
    if cohort_rows:
        scorer = CohortScorer(cohort_table, speakers, usable_top_n, as_norm_chunk_size, scoring)
        normalized = normalize_embeddings(table.embeddings, scorer.mean)
        stats = scorer.stats(normalized)
        quality = embedding_quality(table.embeddings)
        if qmf_calibration is not None:
            calibrator = QMFCalibrator.load(qmf_calibration)
            if (calibrator.solver, calibrator.standardize) != (scoring.qmf_solver, scoring.qmf_standardize):
                raise ValueError(
                    f"{qmf_calibration} was fitted with solver={calibrator.solver}, "
                    f"standardize={calibrator.standardize}; protocol {protocol!r} fits with "
                    f"solver={scoring.qmf_solver}, standardize={scoring.qmf_standardize}"
                )
        else:
            calibrator = fit_qmf(
                scorer, cohort_table, speakers, qmf_pairs, seed, qmf_regularization,
                qmf_max_iter, scoring,
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
        reported = {scoring.condition(condition): scores[condition] for condition in conditions}
        results[name] = {
            condition: evaluate_scores(values, trial_list.labels, p_targets, scoring.eer_rule)
            for condition, values in reported.items()
        }
        plot_det(
            {condition: (values, trial_list.labels) for condition, values in reported.items()},
            {condition: metrics["eer"] for condition, metrics in results[name].items()},
            plots[name],
            title=f"{name}: {len(trial_list)} trials ({scoring.name} protocol)",
        )
    write_results(
        results,
        output_folder,
        p_targets,
        run_info={
            "protocol": scoring.name,
            "model": model,
            "model_key": cache_key,
            "data_folder": str(Path(data_folder).resolve()),
            "trial_lists": {
                name: {"path": str(Path(t.path).resolve()), "sha1": _sha1(t.path), "num_trials": len(t)}
                for name, t in trials.items()
            },
            "cohort_csv": None if cohort_csv is None else str(Path(cohort_csv).resolve()),
            "cohort_utterances": len(cohort_rows),
            "cohort_speakers": len(set(speakers)),
            "cohort_utterances_per_speaker": cohort_utterances_per_speaker,
            "top_n": usable_top_n,
            "top_n_requested": top_n if cohort_rows else None,
            "qmf_pairs": qmf_pairs if cohort_rows and qmf_calibration is None else None,
            "qmf_calibration": None if qmf_calibration is None else str(Path(qmf_calibration).resolve()),
            "max_chunk_seconds": max_chunk_seconds,
            "seed": seed,
            "p_targets": list(p_targets),
        },
        heading=f"Scoring protocol: {scoring.name} ({scoring.description}).",
    )
    return results
