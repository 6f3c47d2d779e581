"""Speaker-verification scoring: metrics, trial lists, embeddings, AS-Norm, QMF, protocols and reports."""

from lap_speechbrain.data.trials import TrialListError, Trials, read_trials
from lap_speechbrain.scoring.embeddings import (
    EmbeddingTable,
    MissingAudioError,
    NonFiniteError,
    audio_identity,
    extract_embeddings,
)
from lap_speechbrain.scoring.metrics import (
    compute_eer,
    compute_min_dcf,
    det_curve,
    reference_eer,
)
from lap_speechbrain.scoring.normalization import (
    as_norm,
    cosine_scores,
    normalize_embeddings,
    speaker_cohort,
    top_n_stats,
    trial_scores,
)
from lap_speechbrain.scoring.protocol import PROTOCOLS, ScoringProtocol, get_protocol
from lap_speechbrain.scoring.qmf import QMFCalibrator, qmf_features
from lap_speechbrain.scoring.report import (
    evaluate_scores,
    markdown_table,
    plot_det,
    write_results,
)
from lap_speechbrain.scoring.verification import (
    encoder_embedding_fn,
    model_fingerprint,
    run_verification,
)

__all__ = [
    "EmbeddingTable",
    "MissingAudioError",
    "NonFiniteError",
    "PROTOCOLS",
    "QMFCalibrator",
    "ScoringProtocol",
    "TrialListError",
    "Trials",
    "as_norm",
    "audio_identity",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "det_curve",
    "encoder_embedding_fn",
    "evaluate_scores",
    "extract_embeddings",
    "get_protocol",
    "markdown_table",
    "model_fingerprint",
    "normalize_embeddings",
    "plot_det",
    "qmf_features",
    "read_trials",
    "reference_eer",
    "run_verification",
    "speaker_cohort",
    "top_n_stats",
    "trial_scores",
    "write_results",
]
