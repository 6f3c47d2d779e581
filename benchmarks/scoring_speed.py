#!/usr/bin/env python3
"""Speed and memory of the scoring on VoxCeleb1-E-sized inputs (a script, not a test).

1. EER + minDCF (p_target 0.01 and 0.05) on 579,818 random trials, and the
   same three metrics with SpeechBrain's ``EER``/``minDCF`` against ours on a
   subset SpeechBrain can run (its EER loops over every threshold).
2. AS-Norm for 579,818 trials over ~145,000 utterances with a 5,994-speaker,
   192-d cohort and top-600: top-N statistics once per utterance, then the
   per-trial combination.

Prints medians over ``--repeats`` runs (AS-Norm: ``--as_norm_repeats``) and
the peak resident memory of the process (``resource.getrusage``).

Usage::

    python benchmarks/scoring_speed.py
    python benchmarks/scoring_speed.py --repeats 5 --sb_subset 4000

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import resource
import statistics
import time

import numpy as np
import torch
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


def ours(scores, labels):
    # What the verification run calls: one sort for the three metrics.
    metrics = evaluate_scores(scores, labels, p_targets=(0.01, 0.05))
    return metrics["eer"], metrics["min_dcf_0.01"], metrics["min_dcf_0.05"]


def speechbrain(scores, labels):
    positives = torch.as_tensor(scores[labels == 1])
    negatives = torch.as_tensor(scores[labels == 0])
    # SpeechBrain's minDCF is not normalised: divide by min(p, 1 - p).
    return (
        sb_eer(positives, negatives)[0],
        sb_min_dcf(positives, negatives, p_target=0.01)[0] / 0.01,
        sb_min_dcf(positives, negatives, p_target=0.05)[0] / 0.05,
    )


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

    # --- metrics
    labels = rng.integers(0, 2, args.trials)
    scores = (rng.normal(size=args.trials) + 3.0 * labels).astype(np.float32)
    seconds, values = timed(lambda: ours(scores, labels), args.repeats)
    print(
        f"metrics, {args.trials} trials: EER + minDCF@0.01 + minDCF@0.05 in {seconds:.3f} s "
        f"(median of {args.repeats}); EER {100 * values[0]:.3f} %"
    )
    print(f"peak memory after the metrics: {peak_memory_gb():.2f} GB")

    # --- AS-Norm
    utterances = normalize_embeddings(torch.randn(args.utterances, args.dim))
    cohort = normalize_embeddings(torch.randn(args.cohort, args.dim))
    enrol = torch.as_tensor(rng.integers(0, args.utterances, args.trials))
    test = torch.as_tensor(rng.integers(0, args.utterances, args.trials))

    def run_as_norm():
        mean, std = top_n_stats(utterances, cohort, args.top_n, args.chunk_size)
        raw = trial_scores(utterances, enrol, test)
        return as_norm(raw, (mean[enrol], std[enrol]), (mean[test], std[test]))

    seconds, normalized = timed(run_as_norm, args.as_norm_repeats)
    print(
        f"AS-Norm, {args.trials} trials over {args.utterances} utterances, cohort "
        f"{args.cohort}x{args.dim}, top-{args.top_n}: {seconds:.1f} s "
        f"(median of {args.as_norm_repeats}); {normalized.shape[0]} scores"
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
