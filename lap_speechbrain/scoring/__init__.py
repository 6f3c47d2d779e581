"""Speaker-verification scoring: metrics, trial lists, embeddings, AS-Norm, QMF and reports."""

from lap_speechbrain.data.trials import TrialListError, Trials, read_trials
from lap_speechbrain.scoring.embeddings import (
    EmbeddingTable,
    MissingAudioError,
    extract_embeddings,
)
from lap_speechbrain.scoring.metrics import compute_eer, compute_min_dcf, det_curve
from lap_speechbrain.scoring.normalization import (
    as_norm,
    cosine_scores,
    normalize_embeddings,
    speaker_cohort,
    top_n_stats,
    trial_scores,
)
from lap_speechbrain.scoring.qmf import QMFCalibrator, qmf_features
from lap_speechbrain.scoring.report import (
    evaluate_scores,
    markdown_table,
    plot_det,
    write_results,
)
from lap_speechbrain.scoring.verification import (
    encoder_embedding_fn,
    evaluate_model,
    model_fingerprint,
    run_verification,
)

__all__ = [
    "EmbeddingTable",
    "MissingAudioError",
    "QMFCalibrator",
    "TrialListError",
    "Trials",
    "as_norm",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "det_curve",
    "encoder_embedding_fn",
    "evaluate_model",
    "evaluate_scores",
    "extract_embeddings",
    "markdown_table",
    "model_fingerprint",
    "normalize_embeddings",
    "plot_det",
    "qmf_features",
    "read_trials",
    "run_verification",
    "speaker_cohort",
    "top_n_stats",
    "trial_scores",
    "write_results",
]
