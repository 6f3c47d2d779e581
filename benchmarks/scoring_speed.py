#!/usr/bin/env python3
"""Speed and memory of the scoring on VoxCeleb1-E-sized inputs (a script, not a test).

1. EER + minDCF (p_target 0.01 and 0.05) on 579,818 random trials: ours
   (one sort, hand-written counts) against the same three metrics from
   ``sklearn.metrics.roc_curve``, interleaved in one run; and SpeechBrain's
   ``EER``/``minDCF`` against ours on a subset SpeechBrain can run (its EER
   loops over every threshold).
2. AS-Norm for 579,818 trials over ~145,000 utterances with a 5,994-speaker,
   192-d cohort and top-600: top-N statistics once per utterance, then the
   per-trial combination; the numpy implementation of
   :mod:`lap_speechbrain.scoring.normalization` against the torch one it
   replaced (``torch.topk`` and fancy indexing), in the same run, with the
   largest difference of their scores.

Prints medians over ``--repeats`` runs (AS-Norm: ``--as_norm_repeats``) and
the peak resident memory of the process (``resource.getrusage``).

Usage::

    python benchmarks/scoring_speed.py
    python benchmarks/scoring_speed.py --repeats 5 --sb_subset 4000 --as_norm_repeats 3

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import resource
import statistics
import time

import numpy as np
import torch
from sklearn.metrics import roc_curve
from speechbrain.utils.metric_stats import EER as sb_eer
from speechbrain.utils.metric_stats import minDCF as sb_min_dcf

from lap_speechbrain.scoring import (
    as_norm,
    evaluate_scores,
    normalize_embeddings,
    top_n_stats,
    trial_scores,
)


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(function, repeats):
    """Median wall time of ``repeats`` calls, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved(first, second, repeats):
    """Medians of two functions timed alternately (same machine state), and their last results."""
    times = ([], [])
    results = [None, None]
    for _ in range(repeats):
        for index, function in enumerate((first, second)):
            start = time.perf_counter()
            results[index] = function()
            times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1]), results


def ours(scores, labels):
    # What the verification run calls: one sort for the three metrics.
    metrics = evaluate_scores(scores, labels, p_targets=(0.01, 0.05))
    return metrics["eer"], metrics["min_dcf_0.01"], metrics["min_dcf_0.05"]


def sklearn_metrics(scores, labels):
    """The same three metrics from sklearn's ROC curve (every operating point)."""
    p_fa, p_hit, _ = roc_curve(labels, scores, drop_intermediate=False)
    p_miss = 1.0 - p_hit
    num_targets = int(labels.sum())
    num_nontargets = labels.size - num_targets
    gap = np.abs(np.rint(p_fa * num_nontargets) * num_targets - np.rint(p_miss * num_targets) * num_nontargets)
    best = int(np.argmin(gap))
    dcfs = [
        float(np.min(p * p_miss + (1 - p) * p_fa) / min(p, 1 - p)) for p in (0.01, 0.05)
    ]
    return float((p_fa[best] + p_miss[best]) / 2), *dcfs


def speechbrain(scores, labels):
    positives = torch.as_tensor(scores[labels == 1])
    negatives = torch.as_tensor(scores[labels == 0])
    # SpeechBrain's minDCF is not normalised: divide by min(p, 1 - p).
    return (
        sb_eer(positives, negatives)[0],
        sb_min_dcf(positives, negatives, p_target=0.01)[0] / 0.01,
        sb_min_dcf(positives, negatives, p_target=0.05)[0] / 0.05,
    )


def torch_as_norm(utterances, cohort, top_n, chunk_size, enrol, test):
    """The torch implementation that the numpy one replaced (on the inputs' device)."""
    means = torch.empty(utterances.shape[0], device=utterances.device)
    stds = torch.empty(utterances.shape[0], device=utterances.device)
    for start in range(0, utterances.shape[0], chunk_size):
        stop = start + chunk_size
        top = torch.topk(utterances[start:stop] @ cohort.T, top_n, dim=1, sorted=False).values
        means[start:stop] = top.mean(dim=1)
        stds[start:stop] = top.std(dim=1, correction=0)
    raw = torch.empty(enrol.shape[0], device=utterances.device)
    for start in range(0, enrol.shape[0], 65536):
        stop = start + 65536
        raw[start:stop] = (utterances[enrol[start:stop]] * utterances[test[start:stop]]).sum(dim=-1)
    return (
        (raw - means[enrol]) / stds[enrol].clamp(min=1e-6)
        + (raw - means[test]) / stds[test].clamp(min=1e-6)
    ) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=579818)
    parser.add_argument("--utterances", type=int, default=145000)
    parser.add_argument("--cohort", type=int, default=5994)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--top_n", type=int, default=600)
    parser.add_argument("--chunk_size", type=int, default=4096)
    parser.add_argument("--sb_subset", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--as_norm_repeats", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch threads: {torch.get_num_threads()}")

    # --- metrics: ours vs sklearn's roc_curve, interleaved
    labels = rng.integers(0, 2, args.trials)
    scores = (rng.normal(size=args.trials) + 3.0 * labels).astype(np.float32)
    our_seconds, sk_seconds, (values, sk_values) = interleaved(
        lambda: ours(scores, labels), lambda: sklearn_metrics(scores, labels), args.repeats
    )
    difference = np.max(np.abs(np.subtract(values, sk_values)))
    print(
        f"metrics, {args.trials} trials: EER + minDCF@0.01 + minDCF@0.05 in {our_seconds:.3f} s "
        f"(median of {args.repeats}); from sklearn.metrics.roc_curve {sk_seconds:.3f} s, "
        f"ratio {sk_seconds / our_seconds:.1f}x; largest difference of the three values "
        f"{difference:.2e}; EER {100 * values[0]:.3f} %"
    )
    print(f"peak memory after the metrics: {peak_memory_gb():.2f} GB")

    # --- AS-Norm: numpy (ours) vs the torch implementation it replaced, interleaved
    utterances = normalize_embeddings(rng.standard_normal((args.utterances, args.dim), dtype=np.float32))
    cohort = normalize_embeddings(rng.standard_normal((args.cohort, args.dim), dtype=np.float32))
    enrol = rng.integers(0, args.utterances, args.trials)
    test = rng.integers(0, args.utterances, args.trials)

    def run_as_norm():
        mean, std = top_n_stats(utterances, cohort, args.top_n, args.chunk_size)
        raw = trial_scores(utterances, enrol, test)
        return as_norm(raw, (mean[enrol], std[enrol]), (mean[test], std[test]))

    torch_inputs = (torch.from_numpy(utterances), torch.from_numpy(cohort), args.top_n, args.chunk_size,
                    torch.from_numpy(enrol), torch.from_numpy(test))
    numpy_seconds, torch_seconds, (normalized, before) = interleaved(
        run_as_norm, lambda: torch_as_norm(*torch_inputs).numpy(), args.as_norm_repeats
    )
    absolute = np.abs(normalized - before)
    # Both against float64 arithmetic on the first 2,000 trials' utterances.
    rows = np.unique(np.concatenate([enrol[:2000], test[:2000]]))
    exact64 = utterances[rows].astype(np.float64) @ cohort.T.astype(np.float64)
    top = -np.sort(-exact64, axis=1)[:, : args.top_n]
    position = {row: k for k, row in enumerate(rows)}
    e = np.array([position[r] for r in enrol[:2000]])
    t = np.array([position[r] for r in test[:2000]])
    raw64 = np.einsum("ij,ij->i", utterances[enrol[:2000]].astype(np.float64), utterances[test[:2000]].astype(np.float64))
    mean64, std64 = top.mean(axis=1), top.std(axis=1)
    exact = ((raw64 - mean64[e]) / std64[e] + (raw64 - mean64[t]) / std64[t]) / 2
    print(
        f"AS-Norm, {args.trials} trials over {args.utterances} utterances, cohort "
        f"{args.cohort}x{args.dim}, top-{args.top_n}: {numpy_seconds:.1f} s (numpy), "
        f"{torch_seconds:.1f} s (torch topk + indexing, before), ratio "
        f"{torch_seconds / numpy_seconds:.1f}x (medians of {args.as_norm_repeats}); "
        f"largest difference {absolute.max():.1e}; from float64 arithmetic (2,000 trials): "
        f"numpy {np.abs(normalized[:2000] - exact).max():.1e}, torch {np.abs(before[:2000] - exact).max():.1e}"
    )
    print(f"peak memory: {peak_memory_gb():.2f} GB")

    # --- SpeechBrain's metrics on a subset (last: its broadcasting minDCF
    # allocates thresholds x trials and would dominate the peak above)
    subset = slice(0, args.sb_subset)
    sb_seconds, sb_values = timed(lambda: speechbrain(scores[subset], labels[subset]), 1)
    our_seconds, our_values = timed(lambda: ours(scores[subset], labels[subset]), args.repeats)
    difference = np.max(np.abs(np.subtract(sb_values, our_values)))
    print(
        f"metrics, {args.sb_subset} trials: SpeechBrain {sb_seconds:.3f} s, "
        f"ours {our_seconds:.4f} s, ratio {sb_seconds / our_seconds:.0f}x; "
        f"largest difference of the three values {difference:.2e}"
    )


if __name__ == "__main__":
    main()
