"""Verification metrics: EER, normalised minDCF and the DET curve.

All three come from one pass over the sorted scores: the trials are sorted
once, and cumulative sums of the labels give the miss and false-alarm counts
at every operating point. An operating point sits between two *distinct*
scores (tied scores are never split), so a list with U distinct scores has
U + 1 operating points, from "accept all" to "reject all". This runs in well
under a second for the 579,818 trials of VoxCeleb1-E, where SpeechBrain's
``EER``/``minDCF`` loop over (or broadcast against) every threshold.

Convention: a trial is accepted when ``score >= threshold``.

:func:`reference_eer` is the EER of the authors' reference code (the
reference scoring protocol): scikit-learn's ROC curve, the point where the
two error rates are closest, the larger of the two rates there.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import NamedTuple, Sequence, Tuple, Union

import numpy as np
import torch
from sklearn.metrics import roc_curve

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


class ErrorCounts(NamedTuple):
    """Miss and false-alarm counts at every operating point.

    Entry k rejects the k lowest distinct scores (k = 0: accept all).

    Arguments
    ---------
    misses : np.ndarray
        (U + 1,) int64, target trials rejected.
    false_alarms : np.ndarray
        (U + 1,) int64, non-target trials accepted.
    thresholds : np.ndarray
        (U + 1,) float64, the threshold of each operating point.
    num_targets : int
        Number of target trials.
    num_nontargets : int
        Number of non-target trials.
    """

    misses: np.ndarray
    false_alarms: np.ndarray
    thresholds: np.ndarray
    num_targets: int
    num_nontargets: int


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    """Converts a tensor, array or list to a 1-D numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def validate_trials(scores: ArrayLike, labels: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Checks scores and labels and returns them as float64 / int64 arrays.

    Arguments
    ---------
    scores : array-like
        (T,) trial scores, higher means "same speaker".
    labels : array-like
        (T,) 1 for target trials, 0 for non-target trials.

    Returns
    -------
    scores : np.ndarray
        (T,) float64.
    labels : np.ndarray
        (T,) int64.

    Raises
    ------
    ValueError
        Lengths differ, a score is not finite, a label is not 0/1, or one of
        the two classes is missing (no EER or minDCF without both).
    """
    scores = _as_array(scores, "scores").astype(np.float64)
    labels = _as_array(labels, "labels")
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels differ in length: {scores.shape[0]} vs {labels.shape[0]}"
        )
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(
            f"{bad.size} scores are not finite (NaN or inf), first at trial {int(bad[0])}"
        )
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise ValueError(
            f"labels must be 0 (non-target) or 1 (target); trial {int(bad[0])} "
            f"has label {labels[bad[0]]!r}"
        )
    labels = labels.astype(np.int64)
    num_targets = int(labels.sum())
    if num_targets == 0 or num_targets == labels.size:
        present = "target" if num_targets else "non-target"
        raise ValueError(
            f"an EER/minDCF needs both target and non-target trials; all {labels.size} "
            f"trials are {present} trials"
        )
    return scores, labels


def error_counts(scores: ArrayLike, labels: ArrayLike) -> ErrorCounts:
    """Miss and false-alarm counts at every operating point, from one sort.

    Arguments
    ---------
    scores : array-like
        (T,) trial scores, higher means "same speaker".
    labels : array-like
        (T,) 1 for target trials, 0 for non-target trials.

    Returns
    -------
    ErrorCounts
        Counts and thresholds at the U + 1 operating points.

    Example
    -------
    >>> counts = error_counts([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1])
    >>> counts.misses.tolist(), counts.false_alarms.tolist()
    ([0, 0, 1, 2], [2, 1, 0, 0])
    >>> counts.thresholds.tolist()
    [0.1, 0.3, 0.7, 0.9000000000000001]
    """
    # Hand-written rather than sklearn.metrics.roc_curve (the same operating
    # points with drop_intermediate=False): 1.6-2.2x faster on 579,818 trials
    # (benchmarks/scoring_speed.py), and equal to it (tests/test_scoring.py).
    scores, labels = validate_trials(scores, labels)
    # Order inside a run of tied scores does not matter (only run ends are read),
    # so the fast unstable sort is enough.
    order = np.argsort(scores)
    sorted_scores = scores[order]
    cum_targets = np.cumsum(labels[order])
    # Last position of each run of equal scores: a threshold can only sit there.
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    num_targets = int(cum_targets[-1])
    num_nontargets = scores.size - num_targets
    misses = np.concatenate(([0], cum_targets[run_ends]))
    rejected_nontargets = run_ends + 1 - cum_targets[run_ends]
    false_alarms = np.concatenate(([num_nontargets], num_nontargets - rejected_nontargets))
    distinct = sorted_scores[run_ends]
    # Midpoints between distinct scores; where two scores are adjacent floats the
    # midpoint can round down onto the lower one, so take the upper one then.
    middle = (distinct[:-1] + distinct[1:]) / 2
    middle = np.where(middle > distinct[:-1], middle, distinct[1:])
    thresholds = np.concatenate(
        ([distinct[0]], middle, [np.nextafter(distinct[-1], np.inf)])
    )
    return ErrorCounts(misses, false_alarms, thresholds, num_targets, num_nontargets)


def det_curve(scores: ArrayLike, labels: ArrayLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every operating point (for a DET plot).

    Arguments
    ---------
    scores : array-like
        (T,) trial scores.
    labels : array-like
        (T,) 0/1 labels.

    Returns
    -------
    p_miss : np.ndarray
        (U + 1,) miss rates, non-decreasing.
    p_fa : np.ndarray
        (U + 1,) false-alarm rates, non-increasing.
    thresholds : np.ndarray
        (U + 1,) thresholds (accept when ``score >= threshold``).

    Example
    -------
    >>> p_miss, p_fa, _ = det_curve([0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1])
    >>> p_miss.tolist(), p_fa.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.0, 0.0])
    """
    counts = error_counts(scores, labels)
    return (
        counts.misses / counts.num_targets,
        counts.false_alarms / counts.num_nontargets,
        counts.thresholds,
    )


def compute_eer(scores: ArrayLike, labels: ArrayLike) -> Tuple[float, float]:
    """Equal error rate, as a fraction in [0, 1], and its threshold.

    The operating point where the miss and false-alarm rates are closest is
    chosen (the lower threshold when two are equally close, as SpeechBrain's
    ``EER`` does) and the EER is the mean of the two rates there. The
    comparison of rate differences is done in exact integer arithmetic so
    ties do not depend on rounding.

    Arguments
    ---------
    scores : array-like
        (T,) trial scores, higher means "same speaker".
    labels : array-like
        (T,) 1 for target trials, 0 for non-target trials.

    Returns
    -------
    eer : float
        Equal error rate in [0, 1] (not %).
    threshold : float
        Accept when ``score >= threshold``.

    Example
    -------
    >>> compute_eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    (0.0, 0.5)
    >>> eer, _ = compute_eer([0.1, 0.6, 0.4, 0.9], [0, 0, 1, 1])
    >>> eer
    0.5
    """
    return eer_from_counts(error_counts(scores, labels))


def eer_from_counts(counts: ErrorCounts) -> Tuple[float, float]:
    """:func:`compute_eer` from precomputed :func:`error_counts`.

    Arguments
    ---------
    counts : ErrorCounts
        Counts at every operating point.

    Returns
    -------
    eer : float
        Equal error rate in [0, 1].
    threshold : float
        Accept when ``score >= threshold``.
    """
    # |p_fa - p_miss| * P * N, exact in int64 (P * N < 2**63 for any real list).
    gap = np.abs(
        counts.false_alarms * counts.num_targets - counts.misses * counts.num_nontargets
    )
    best = int(np.argmin(gap))
    eer = (
        counts.false_alarms[best] / counts.num_nontargets
        + counts.misses[best] / counts.num_targets
    ) / 2
    return float(eer), float(counts.thresholds[best])


def reference_eer(scores: ArrayLike, labels: ArrayLike) -> Tuple[float, float]:
    """The reference implementation's EER: the larger error rate where the two are closest.

    The operating points are those of ``sklearn.metrics.roc_curve`` with its
    default ``drop_intermediate=True`` (the corners of the ROC staircase),
    as in the authors' code; the EER is ``max(p_fa, p_miss)`` at the point
    where ``|p_fa - p_miss|`` is smallest. It can differ from
    :func:`compute_eer` by about one step of the staircase (one trial of
    one class, as a rate).

    Arguments
    ---------
    scores : array-like
        (T,) trial scores, higher means "same speaker".
    labels : array-like
        (T,) 1 for target trials, 0 for non-target trials.

    Returns
    -------
    eer : float
        Equal error rate in [0, 1] (not %).
    threshold : float
        Accept when ``score >= threshold``.

    Example
    -------
    >>> reference_eer([0.1, 0.6, 0.4, 0.9], [0, 0, 1, 1])
    (0.5, 0.6)
    """
    scores, labels = validate_trials(scores, labels)
    p_fa, p_hit, thresholds = roc_curve(labels, scores)
    p_miss = 1.0 - p_hit
    best = int(np.argmin(np.abs(p_miss - p_fa)))
    return float(max(p_fa[best], p_miss[best])), float(thresholds[best])


def compute_min_dcf(
    scores: ArrayLike,
    labels: ArrayLike,
    p_target: float,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> Tuple[float, float]:
    """Normalised minimum detection cost and its threshold.

    ``min over thresholds of (c_miss * p_miss * p_target + c_fa * p_fa *
    (1 - p_target)) / min(c_miss * p_target, c_fa * (1 - p_target))``: the
    cost divided by that of the best system that always accepts or always
    rejects, so 1.0 means "no better than a constant decision". SpeechBrain's
    ``minDCF`` returns the numerator only.

    Arguments
    ---------
    scores : array-like
        (T,) trial scores.
    labels : array-like
        (T,) 0/1 labels.
    p_target : float
        Prior probability of a target trial, in (0, 1).
    c_miss : float
        Cost of a miss.
    c_fa : float
        Cost of a false alarm.

    Returns
    -------
    min_dcf : float
        Normalised minimum detection cost, in [0, 1].
    threshold : float
        Accept when ``score >= threshold``.

    Example
    -------
    >>> compute_min_dcf([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], p_target=0.01)
    (0.0, 0.5)
    >>> dcf, _ = compute_min_dcf([0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1], p_target=0.05)
    >>> dcf
    1.0
    """
    return min_dcf_from_counts(error_counts(scores, labels), p_target, c_miss, c_fa)


def min_dcf_from_counts(
    counts: ErrorCounts, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> Tuple[float, float]:
    """:func:`compute_min_dcf` from precomputed :func:`error_counts`.

    Arguments
    ---------
    counts : ErrorCounts
        Counts at every operating point.
    p_target : float
        Prior probability of a target trial, in (0, 1).
    c_miss : float
        Cost of a miss.
    c_fa : float
        Cost of a false alarm.

    Returns
    -------
    min_dcf : float
        Normalised minimum detection cost, in [0, 1].
    threshold : float
        Accept when ``score >= threshold``.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    cost = c_miss * p_target * (counts.misses / counts.num_targets) + c_fa * (
        1.0 - p_target
    ) * (counts.false_alarms / counts.num_nontargets)
    best = int(np.argmin(cost))
    default_cost = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(cost[best] / default_cost), float(counts.thresholds[best])
