"""Cosine scoring with mean subtraction, and adaptive symmetric score normalisation.

docs/lap_spec.md section 6: embeddings have the training-set mean subtracted
before cosine scoring; AS-Norm uses a cohort of one mean embedding per
training speaker and, for each side of a trial, the mean and standard
deviation of its top-N cohort scores::

    s_norm = ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t) / 2

The top-N statistics depend on one utterance only, so they are computed once
per utterance (:func:`top_n_stats`, in chunks that bound memory) and then
combined per trial (:func:`as_norm`); nothing is computed per trial except
a lookup. The standard deviation is the population one (ddof = 0).

Authors
 * lap-speechbrain contributors 2026
"""

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

TensorLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(values: TensorLike) -> torch.Tensor:
    """A float32 CPU tensor view of an array or tensor."""
    return torch.as_tensor(values).float()


def normalize_embeddings(embeddings: TensorLike, mean: Optional[TensorLike] = None) -> torch.Tensor:
    """Subtracts the training-set mean (if given) and L2-normalises each row.

    Arguments
    ---------
    embeddings : torch.Tensor or np.ndarray
        (N, E) embeddings.
    mean : torch.Tensor or np.ndarray, optional
        (E,) mean embedding of the training set.

    Returns
    -------
    torch.Tensor
        (N, E) float32 unit-length rows.

    Example
    -------
    >>> embeddings = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    >>> normalize_embeddings(embeddings, mean=torch.tensor([1.0, 0.0])).tolist()
    [[0.4472135901451111, 0.8944271802902222], [0.0, 0.0]]
    """
    embeddings = _as_tensor(embeddings)
    if mean is not None:
        embeddings = embeddings - _as_tensor(mean)
    return F.normalize(embeddings, dim=-1)


def cosine_scores(enrol_embs: TensorLike, test_embs: TensorLike) -> torch.Tensor:
    """Row-wise cosine similarity: trial i scores ``enrol_embs[i]`` against ``test_embs[i]``.

    Arguments
    ---------
    enrol_embs : torch.Tensor or np.ndarray
        (T, E) enrolment embeddings.
    test_embs : torch.Tensor or np.ndarray
        (T, E) test embeddings.

    Returns
    -------
    torch.Tensor
        (T,) cosine scores in [-1, 1].

    Example
    -------
    >>> enrol = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    >>> cosine_scores(enrol, torch.tensor([[2.0, 0.0], [-1.0, -1.0]])).tolist()
    [1.0, -0.9999999403953552]
    """
    return F.cosine_similarity(_as_tensor(enrol_embs), _as_tensor(test_embs), dim=-1)


def trial_scores(
    embeddings: torch.Tensor,
    enrol_index: TensorLike,
    test_index: TensorLike,
    chunk_size: int = 65536,
) -> torch.Tensor:
    """Dot products of rows ``enrol_index[i]`` and ``test_index[i]`` of a table.

    With unit-length rows (see :func:`normalize_embeddings`) these are the
    cosine scores. Trials are processed in chunks so the gathered rows never
    take more than ``2 * chunk_size * E`` floats.

    Arguments
    ---------
    embeddings : torch.Tensor
        (U, E) one row per utterance.
    enrol_index, test_index : torch.Tensor or np.ndarray
        (T,) row of the enrolment / test utterance of each trial.
    chunk_size : int
        Trials per chunk.

    Returns
    -------
    torch.Tensor
        (T,) scores.

    Example
    -------
    >>> table = torch.eye(3)
    >>> trial_scores(table, [0, 1, 2], [0, 2, 2]).tolist()
    [1.0, 0.0, 1.0]
    """
    enrol_index = torch.as_tensor(enrol_index, dtype=torch.long)
    test_index = torch.as_tensor(test_index, dtype=torch.long)
    scores = torch.empty(enrol_index.shape[0])
    for start in range(0, enrol_index.shape[0], chunk_size):
        stop = start + chunk_size
        scores[start:stop] = (
            embeddings[enrol_index[start:stop]] * embeddings[test_index[start:stop]]
        ).sum(dim=-1)
    return scores


def speaker_cohort(
    embeddings: TensorLike, speakers: Sequence[str]
) -> Tuple[torch.Tensor, List[str]]:
    """One unit-length mean embedding per speaker (the AS-Norm cohort).

    Arguments
    ---------
    embeddings : torch.Tensor or np.ndarray
        (N, E) normalised (mean-subtracted, unit-length) training embeddings.
    speakers : sequence of str
        (N,) speaker of each embedding.

    Returns
    -------
    cohort : torch.Tensor
        (S, E) unit-length speaker means, in the order of ``names``.
    names : list of str
        (S,) sorted speaker names.

    Example
    -------
    >>> embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> cohort, names = speaker_cohort(embeddings, ["b", "a", "a"])
    >>> names, cohort.tolist()
    (['a', 'b'], [[0.0, 1.0], [1.0, 0.0]])
    """
    embeddings = _as_tensor(embeddings)
    if embeddings.shape[0] != len(speakers):
        raise ValueError(
            f"{embeddings.shape[0]} embeddings but {len(speakers)} speaker labels"
        )
    names, index = np.unique(np.asarray(speakers, dtype=str), return_inverse=True)
    sums = torch.zeros(len(names), embeddings.shape[1])
    sums.index_add_(0, torch.as_tensor(index, dtype=torch.long), embeddings)
    return F.normalize(sums, dim=-1), names.tolist()


def top_n_stats(
    embeddings: TensorLike,
    cohort: TensorLike,
    top_n: int,
    chunk_size: int = 4096,
    exclude: Optional[TensorLike] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each utterance's N highest cohort scores.

    The (U, S) score matrix is never held whole: ``chunk_size`` rows at a
    time are scored against the cohort and reduced to their top N.

    Arguments
    ---------
    embeddings : torch.Tensor or np.ndarray
        (U, E) unit-length utterance embeddings.
    cohort : torch.Tensor or np.ndarray
        (S, E) unit-length cohort embeddings.
    top_n : int
        Number N of highest cohort scores kept per utterance.
    chunk_size : int
        Utterances scored at once (memory: ``chunk_size * S`` floats).
    exclude : torch.Tensor or np.ndarray, optional
        (U, K) cohort rows to leave out for each utterance (for example the
        speakers of a calibration pair); the same row may repeat.

    Returns
    -------
    mean : torch.Tensor
        (U,) mean of the top-N scores.
    std : torch.Tensor
        (U,) population standard deviation of the top-N scores.

    Example
    -------
    >>> cohort = torch.eye(3)
    >>> mean, std = top_n_stats(torch.tensor([[1.0, 0.0, 0.0]]), cohort, top_n=2)
    >>> mean.tolist(), std.tolist()
    ([0.5], [0.5])
    >>> mean, _ = top_n_stats(torch.tensor([[1.0, 0.0, 0.0]]), cohort, top_n=2, exclude=[[0]])
    >>> mean.tolist()
    [0.0]
    """
    embeddings = _as_tensor(embeddings)
    cohort = _as_tensor(cohort)
    excluded = 0 if exclude is None else int(torch.as_tensor(exclude).shape[1])
    if not 1 <= top_n <= cohort.shape[0] - excluded:
        raise ValueError(
            f"top_n must be between 1 and the cohort size ({cohort.shape[0]}"
            f"{f' minus {excluded} excluded' if excluded else ''}), got {top_n}"
        )
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.long)
        if exclude.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"exclude has {exclude.shape[0]} rows for {embeddings.shape[0]} embeddings"
            )
    means = torch.empty(embeddings.shape[0])
    stds = torch.empty(embeddings.shape[0])
    for start in range(0, embeddings.shape[0], chunk_size):
        stop = start + chunk_size
        scores = embeddings[start:stop] @ cohort.T
        if exclude is not None:
            scores.scatter_(1, exclude[start:stop], float("-inf"))
        top = torch.topk(scores, top_n, dim=1, sorted=False).values
        means[start:stop] = top.mean(dim=1)
        stds[start:stop] = top.std(dim=1, correction=0)
    return means, stds


def as_norm(
    scores: TensorLike,
    enrol_stats: Tuple[torch.Tensor, torch.Tensor],
    test_stats: Tuple[torch.Tensor, torch.Tensor],
    eps: float = 1e-6,
) -> torch.Tensor:
    """Adaptive symmetric normalisation of raw trial scores.

    Arguments
    ---------
    scores : torch.Tensor or np.ndarray
        (T,) raw cosine scores.
    enrol_stats : tuple of torch.Tensor
        (mean, std), each (T,): top-N statistics of each trial's enrolment side.
    test_stats : tuple of torch.Tensor
        (mean, std), each (T,): the same for the test side.
    eps : float
        Floor on the standard deviations (a cohort with N equal scores).

    Returns
    -------
    torch.Tensor
        (T,) normalised scores.

    Example
    -------
    >>> as_norm(torch.tensor([0.5]), (torch.tensor([0.1]), torch.tensor([0.2])),
    ...         (torch.tensor([0.3]), torch.tensor([0.1]))).tolist()
    [2.0]
    """
    scores = _as_tensor(scores)
    enrol_mean, enrol_std = enrol_stats
    test_mean, test_std = test_stats
    return (
        (scores - enrol_mean) / enrol_std.clamp(min=eps)
        + (scores - test_mean) / test_std.clamp(min=eps)
    ) / 2
