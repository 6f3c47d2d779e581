"""Quality-aware score calibration (QMF): logistic regression on quality features.

docs/lap_spec.md section 6: the calibrated score is a linear function of nine
features of a trial, fitted with logistic regression on pairs drawn from the
training set (half of them target pairs):

====  ==========================================
 0    AS-Norm score
 1-2  log duration (seconds) of enrolment, test
 3-4  L1 norm of the raw enrolment, test embedding
 5-6  L2 norm of the raw enrolment, test embedding
 7-8  std over dimensions of the raw enrolment, test embedding
====  ==========================================

"Raw" means before mean subtraction and length normalisation. By default
the features are standardised before the fit (their scales differ by orders
of magnitude) and the solver is L-BFGS; the reference protocol fits the raw
features with liblinear, as the authors' code does. The fitted model is
stored as plain numbers in JSON, so a saved calibration loads without
pickle and without scikit-learn's version.

Authors
 * lap-speechbrain contributors 2026
"""

import json
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lap_speechbrain.fileio import atomic_open

FEATURE_NAMES = (
    "as_norm_score",
    "log_duration_enrol",
    "log_duration_test",
    "l1_norm_enrol",
    "l1_norm_test",
    "l2_norm_enrol",
    "l2_norm_test",
    "std_enrol",
    "std_test",
)


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def embedding_quality(raw_embeddings) -> np.ndarray:
    """L1 norm, L2 norm and std over dimensions of each raw embedding.

    Arguments
    ---------
    raw_embeddings : np.ndarray or torch.Tensor
        (N, E) embeddings before any normalisation.

    Returns
    -------
    np.ndarray
        (N, 3) columns L1 norm, L2 norm, std (population).

    Example
    -------
    >>> embedding_quality(np.array([[3.0, -4.0]])).tolist()
    [[7.0, 5.0, 3.5]]
    """
    raw = _numpy(raw_embeddings)
    return np.stack(
        [np.abs(raw).sum(axis=1), np.sqrt((raw**2).sum(axis=1)), raw.std(axis=1)], axis=1
    )


def qmf_features(
    as_norm_scores,
    enrol_durations,
    test_durations,
    enrol_quality: np.ndarray,
    test_quality: np.ndarray,
) -> np.ndarray:
    """The nine QMF features of each trial (see the module docstring).

    Arguments
    ---------
    as_norm_scores : array-like
        (T,) AS-Norm scores.
    enrol_durations, test_durations : array-like
        (T,) durations in seconds of each side.
    enrol_quality, test_quality : np.ndarray
        (T, 3) :func:`embedding_quality` of each side's raw embedding.

    Returns
    -------
    np.ndarray
        (T, 9) features in the order of ``FEATURE_NAMES``.

    Example
    -------
    >>> quality = embedding_quality(np.array([[3.0, -4.0]]))
    >>> qmf_features([1.5], [4.0], [8.0], quality, quality).shape
    (1, 9)
    """
    durations = np.stack([_numpy(enrol_durations), _numpy(test_durations)], axis=1)
    if np.any(durations <= 0):
        raise ValueError("QMF needs positive durations; got a duration <= 0")
    enrol_quality, test_quality = _numpy(enrol_quality), _numpy(test_quality)
    return np.column_stack(
        [
            _numpy(as_norm_scores),
            np.log(durations),
            enrol_quality[:, 0],
            test_quality[:, 0],
            enrol_quality[:, 1],
            test_quality[:, 1],
            enrol_quality[:, 2],
            test_quality[:, 2],
        ]
    )


def sample_training_pairs(
    speakers,
    num_pairs: int,
    seed: int,
    target_fraction: float = 0.5,
    nontargets_by: str = "utterance",
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws calibration pairs from labelled training utterances.

    Target pairs are two different utterances of one speaker (speakers with
    one utterance are skipped); non-target pairs are two utterances of
    different speakers. The draw is fixed by ``seed``.

    Arguments
    ---------
    speakers : array-like
        (N,) speaker of each utterance.
    num_pairs : int
        Number of pairs to draw.
    seed : int
        Seed of the random generator.
    target_fraction : float
        Share of target pairs.
    nontargets_by : str
        ``"utterance"``: both sides of a non-target pair are drawn among all
        utterances (speakers with many utterances appear more often);
        ``"speaker"``: two different speakers are drawn, then one utterance
        of each (the reference's draw).

    Returns
    -------
    first, second : np.ndarray
        (num_pairs,) utterance indices of the two sides.
    labels : np.ndarray
        (num_pairs,) 1 for target pairs, 0 for non-target pairs.

    Example
    -------
    >>> first, second, labels = sample_training_pairs(["a", "a", "b", "b", "c"], 6, seed=0)
    >>> labels.tolist()
    [1, 1, 1, 0, 0, 0]
    >>> bool(all((first != second)))
    True
    """
    if nontargets_by not in ("utterance", "speaker"):
        raise ValueError(f"nontargets_by must be 'utterance' or 'speaker', got {nontargets_by!r}")
    speakers = np.asarray(speakers, dtype=str)
    names, speaker_index = np.unique(speakers, return_inverse=True)
    if len(names) < 2:
        raise ValueError("QMF training pairs need at least two speakers")
    rng = np.random.default_rng(seed)
    num_targets = int(round(num_pairs * target_fraction))
    num_nontargets = num_pairs - num_targets

    # Target pairs: a speaker with >= 2 utterances, then two distinct positions
    # inside that speaker's utterances (sorted by speaker so they are contiguous).
    order = np.argsort(speaker_index, kind="stable")
    counts = np.bincount(speaker_index, minlength=len(names))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    eligible = np.flatnonzero(counts >= 2)
    if num_targets and eligible.size == 0:
        raise ValueError("QMF target pairs need a speaker with at least two utterances")
    chosen = rng.choice(eligible, size=num_targets) if num_targets else eligible[:0]
    first_pos = rng.integers(0, counts[chosen])
    # Second position: any other one of the speaker's utterances.
    second_pos = (first_pos + rng.integers(1, counts[chosen])) % counts[chosen]
    target_first = order[starts[chosen] + first_pos]
    target_second = order[starts[chosen] + second_pos]

    if nontargets_by == "speaker":
        # Two different speakers (the second offset from the first), one utterance each.
        first_speaker = rng.integers(0, len(names), size=num_nontargets)
        second_speaker = (first_speaker + rng.integers(1, len(names), size=num_nontargets)) % len(
            names
        )
        nontarget_first = order[starts[first_speaker] + rng.integers(0, counts[first_speaker])]
        nontarget_second = order[starts[second_speaker] + rng.integers(0, counts[second_speaker])]
    else:
        # Draw utterances, redraw the second where speakers match.
        nontarget_first = rng.integers(0, len(speakers), size=num_nontargets)
        nontarget_second = rng.integers(0, len(speakers), size=num_nontargets)
        same = speaker_index[nontarget_first] == speaker_index[nontarget_second]
        while same.any():
            nontarget_second[same] = rng.integers(0, len(speakers), size=int(same.sum()))
            same = speaker_index[nontarget_first] == speaker_index[nontarget_second]

    first = np.concatenate([target_first, nontarget_first])
    second = np.concatenate([target_second, nontarget_second])
    labels = np.concatenate([np.ones(num_targets, int), np.zeros(num_nontargets, int)])
    return first, second, labels


class QMFCalibrator:
    """Logistic-regression calibration of trials from their QMF features.

    Arguments
    ---------
    regularization : float
        Inverse regularisation strength ``C`` of scikit-learn's
        ``LogisticRegression``.
    max_iter : int
        Iterations of the solver.
    seed : int
        ``random_state`` of the solver.
    solver : str
        ``solver`` of ``LogisticRegression`` (``"lbfgs"``, ``"liblinear"``, ...).
    standardize : bool
        Whether the features are standardised before the fit.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1], 50)
    >>> features = rng.normal(size=(100, 9)) + labels[:, None]
    >>> calibrator = QMFCalibrator().fit(features, labels)
    >>> calibrator.score(features).shape
    (100,)
    """

    def __init__(
        self,
        regularization: float = 1.0,
        max_iter: int = 1000,
        seed: int = 0,
        solver: str = "lbfgs",
        standardize: bool = True,
    ):
        self.regularization = regularization
        self.max_iter = max_iter
        self.seed = seed
        self.solver = solver
        self.standardize = standardize
        self.mean: Optional[np.ndarray] = None
        self.scale: Optional[np.ndarray] = None
        self.weights: Optional[np.ndarray] = None
        self.bias: Optional[float] = None

    def fit(self, features: np.ndarray, labels) -> "QMFCalibrator":
        """Fits the calibration on training pairs.

        Arguments
        ---------
        features : np.ndarray
            (P, 9) features from :func:`qmf_features`.
        labels : array-like
            (P,) 1 target, 0 non-target.

        Returns
        -------
        QMFCalibrator
            self.
        """
        features = _numpy(features)
        labels = np.asarray(labels)
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise ValueError(
                f"QMF features must be (pairs, {len(FEATURE_NAMES)}), got {features.shape}"
            )
        if set(np.unique(labels).tolist()) != {0, 1}:
            raise ValueError("QMF training pairs need both target and non-target pairs")
        if self.standardize:
            scaler = StandardScaler().fit(features)
            self.mean, self.scale = scaler.mean_, scaler.scale_
        else:
            self.mean, self.scale = np.zeros(features.shape[1]), np.ones(features.shape[1])
        model = LogisticRegression(
            C=self.regularization,
            max_iter=self.max_iter,
            random_state=self.seed,
            solver=self.solver,
        )
        model.fit((features - self.mean) / self.scale, labels)
        self.weights, self.bias = model.coef_[0], float(model.intercept_[0])
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """Calibrated scores: log-odds of "same speaker" (at the training prior).

        Arguments
        ---------
        features : np.ndarray
            (T, 9) features from :func:`qmf_features`.

        Returns
        -------
        np.ndarray
            (T,) calibrated scores (the log-odds: the reference ranks trials by
            ``predict_proba``, the same order without its saturation at 0 and 1).
        """
        if self.weights is None:
            raise RuntimeError("QMFCalibrator.score called before fit or load")
        return ((_numpy(features) - self.mean) / self.scale) @ self.weights + self.bias

    def save(self, path: Union[str, Path]) -> None:
        """Writes the fitted calibration to a JSON file (atomically).

        Arguments
        ---------
        path : str or Path
            Destination file.
        """
        if self.weights is None:
            raise RuntimeError("QMFCalibrator.save called before fit")
        state = {
            "features": list(FEATURE_NAMES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "regularization": self.regularization,
            "max_iter": self.max_iter,
            "seed": self.seed,
            "solver": self.solver,
            "standardize": self.standardize,
        }
        with atomic_open(path) as out:
            json.dump(state, out, indent=2)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "QMFCalibrator":
        """Reads a calibration written by :meth:`save`.

        Arguments
        ---------
        path : str or Path
            The JSON file.

        Returns
        -------
        QMFCalibrator
            Ready to :meth:`score`.
        """
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        if state.get("features") != list(FEATURE_NAMES):
            raise ValueError(
                f"{path} is not a QMF calibration with the features {list(FEATURE_NAMES)}"
            )
        missing = [
            key
            for key in ("mean", "scale", "weights", "bias", "regularization", "max_iter", "seed",
                        "solver", "standardize")
            if key not in state
        ]
        if missing:
            raise ValueError(f"{path}: QMF calibration without {missing}; fit a new one")
        calibrator = cls(
            state["regularization"],
            state["max_iter"],
            state["seed"],
            state["solver"],
            state["standardize"],
        )
        calibrator.mean = np.asarray(state["mean"])
        calibrator.scale = np.asarray(state["scale"])
        calibrator.weights = np.asarray(state["weights"])
        calibrator.bias = float(state["bias"])
        return calibrator
