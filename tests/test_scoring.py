"""Tests of lap_speechbrain.scoring: metrics, trial lists, AS-Norm, QMF, embeddings, reports."""

import functools
import json
import math
import os

import numpy as np
import pytest
import soundfile
import torch
from conftest import write_audio
from speechbrain.utils.metric_stats import EER as sb_eer
from speechbrain.utils.metric_stats import minDCF as sb_min_dcf
from sklearn.metrics import roc_curve

from lap_speechbrain.inference import load_audio
from lap_speechbrain.scoring import (
    MissingAudioError,
    NonFiniteError,
    QMFCalibrator,
    TrialListError,
    as_norm,
    compute_eer,
    compute_min_dcf,
    cosine_scores,
    det_curve,
    evaluate_scores,
    extract_embeddings,
    normalize_embeddings,
    plot_det,
    read_trials,
    reference_eer,
    speaker_cohort,
    top_n_stats,
    trial_scores,
    write_results,
)
from lap_speechbrain.scoring.metrics import error_counts
from lap_speechbrain.scoring.qmf import (
    embedding_quality,
    qmf_features,
    sample_training_pairs,
)

# --------------------------------------------------------------------------- metrics


def brute_force(scores, labels, p_target):
    """EER (SpeechBrain's definition) and normalised minDCF by trying every threshold."""
    distinct = np.unique(scores)
    # Every cut between distinct scores, plus accept-all and reject-all.
    cuts = np.concatenate(([-np.inf], (distinct[:-1] + distinct[1:]) / 2, [np.inf]))
    targets, nontargets = scores[labels == 1], scores[labels == 0]
    best_gap, eer, dcf = None, None, math.inf
    for cut in cuts:
        p_miss = np.mean(targets < cut)
        p_fa = np.mean(nontargets >= cut)
        gap = abs(p_fa - p_miss)
        # Strictly smaller: the lowest threshold wins among equal gaps.
        if best_gap is None or gap < best_gap - 1e-12:
            best_gap, eer = gap, (p_fa + p_miss) / 2
        dcf = min(dcf, p_target * p_miss + (1 - p_target) * p_fa)
    return eer, dcf / min(p_target, 1 - p_target)


def random_trials(seed, size, decimals=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    labels[:2] = [0, 1]
    scores = rng.normal(size=size) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties
    return scores, labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 1])
def test_metrics_equal_brute_force(seed, decimals):
    scores, labels = random_trials(seed, 150 + 37 * seed, decimals)
    for p_target in (0.01, 0.05, 0.3):
        eer, dcf = brute_force(scores, labels, p_target)
        assert compute_eer(scores, labels)[0] == pytest.approx(eer, abs=1e-12)
        assert compute_min_dcf(scores, labels, p_target)[0] == pytest.approx(dcf, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1])
def test_metrics_equal_speechbrain(seed, decimals):
    scores, labels = random_trials(100 + seed, 120 + 29 * seed, decimals)
    positives = torch.tensor(scores[labels == 1], dtype=torch.float64)
    negatives = torch.tensor(scores[labels == 0], dtype=torch.float64)
    reference_eer = sb_eer(positives, negatives)[0]
    assert compute_eer(scores, labels)[0] == pytest.approx(reference_eer, abs=1e-6)
    for p_target in (0.01, 0.05):
        reference = sb_min_dcf(positives, negatives, p_target=p_target)[0]
        # SpeechBrain returns the unnormalised cost.
        normalised = reference / min(p_target, 1 - p_target)
        assert compute_min_dcf(scores, labels, p_target)[0] == pytest.approx(normalised, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1])
def test_operating_points_equal_sklearn_roc_curve(seed, decimals):
    """The hand-written counts are kept for speed; they must equal the library's."""
    scores, labels = random_trials(200 + seed, 300 + 41 * seed, decimals)
    p_fa, p_hit, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    counts = error_counts(scores, labels)
    # roc_curve goes from "reject all" to "accept all", ours the other way.
    np.testing.assert_allclose(counts.false_alarms[::-1] / counts.num_nontargets, p_fa, atol=1e-15)
    np.testing.assert_allclose(1 - counts.misses[::-1] / counts.num_targets, p_hit, atol=1e-15)
    # Each threshold of ours accepts exactly the scores that sklearn's accepts.
    for ours, theirs in zip(counts.thresholds[::-1][1:], thresholds[1:]):
        assert np.array_equal(scores >= ours, scores >= theirs)


def plain_reference_eer(scores, labels):
    """The reference's EER spelled out: ROC corners, closest rates, the larger one."""
    order = np.argsort(-scores, kind="stable")
    ranked, ranked_labels = scores[order], labels[order]
    points = []  # (false alarms, hits, threshold), from the highest threshold down
    for k in range(len(ranked)):
        if k + 1 < len(ranked) and ranked[k + 1] == ranked[k]:
            continue  # a threshold sits only below a whole run of tied scores
        accepted = ranked_labels[: k + 1]
        points.append((int(np.sum(accepted == 0)), int(np.sum(accepted == 1)), ranked[k]))
    # Keep the corners: drop points in the middle of a straight run (drop_intermediate),
    # then add "reject all" in front.
    corners = [(0, 0, np.inf), points[0]]
    for before, point, after in zip(points, points[1:], points[2:]):
        straight = point[0] - before[0] == after[0] - point[0] and point[1] - before[1] == after[1] - point[1]
        if not straight:
            corners.append(point)
    corners.append(points[-1])
    nontargets, targets = np.sum(labels == 0), np.sum(labels == 1)
    rates = [(fa / nontargets, 1 - hits / targets, threshold) for fa, hits, threshold in corners]
    best = min(rates, key=lambda rate: abs(rate[1] - rate[0]))
    return max(best[0], best[1]), best[2]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 1])
def test_reference_eer_equals_a_plain_implementation(seed, decimals):
    scores, labels = random_trials(300 + seed, 80 + 23 * seed, decimals)
    eer, threshold = reference_eer(scores, labels)
    expected_eer, expected_threshold = plain_reference_eer(scores, labels)
    assert eer == pytest.approx(expected_eer, abs=1e-12)
    assert threshold == pytest.approx(expected_threshold)


def test_thresholds_reproduce_the_operating_point():
    scores, labels = random_trials(7, 300, decimals=1)
    eer, threshold = compute_eer(scores, labels)
    accepted = scores >= threshold
    p_miss = np.mean(~accepted[labels == 1])
    p_fa = np.mean(accepted[labels == 0])
    assert (p_miss + p_fa) / 2 == pytest.approx(eer)
    dcf, threshold = compute_min_dcf(scores, labels, 0.05)
    accepted = scores >= threshold
    cost = 0.05 * np.mean(~accepted[labels == 1]) + 0.95 * np.mean(accepted[labels == 0])
    assert cost / 0.05 == pytest.approx(dcf)


def test_perfect_and_reversed_separation():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    eer, threshold = compute_eer(scores, labels)
    assert eer == 0.0 and 0.3 < threshold <= 0.7
    assert compute_min_dcf(scores, labels, 0.01)[0] == 0.0
    assert compute_eer(scores, 1 - labels)[0] == 1.0
    assert compute_min_dcf(scores, 1 - labels, 0.01)[0] == 1.0


def test_ties_are_never_split():
    # A target and a non-target share 0.5: no threshold separates them.
    scores = np.array([0.1, 0.5, 0.5, 0.9])
    labels = np.array([0, 0, 1, 1])
    reversed_order = np.array([0, 2, 1, 3])
    for order in (np.arange(4), reversed_order):
        eer, threshold = compute_eer(scores[order], labels[order])
        assert eer == 0.25 and threshold == pytest.approx(0.3)
    p_miss, p_fa, _ = det_curve(scores, labels)
    assert p_miss.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert p_fa.tolist() == [1.0, 0.5, 0.0, 0.0]


def test_all_equal_scores():
    scores = np.full(10, 0.3)
    labels = np.array([0, 1] * 5)
    assert compute_eer(scores, labels)[0] == 0.5
    assert compute_min_dcf(scores, labels, 0.01)[0] == 1.0
    assert compute_min_dcf(scores, labels, 0.05)[0] == 1.0


def test_metrics_accept_tensors_and_lists():
    scores, labels = random_trials(3, 50)
    expected = compute_eer(scores, labels)
    assert compute_eer(torch.tensor(scores), torch.tensor(labels)) == expected
    assert compute_eer(scores.tolist(), labels.tolist()) == expected


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, 0.2], [1, 1], "needs both target and non-target"),
        ([0.1, 0.2], [0, 0], "needs both target and non-target"),
        ([0.1, 0.2], [0, 2], "labels must be 0"),
        ([0.1, 0.2], [0.5, 1], "labels must be 0"),
        ([0.1, float("nan")], [0, 1], "not finite"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in length"),
    ],
)
def test_metric_input_errors(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_eer(scores, labels)
    with pytest.raises(ValueError, match=message):
        compute_min_dcf(scores, labels, 0.01)


def test_min_dcf_rejects_bad_prior():
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [0, 1], 1.0)


# --------------------------------------------------------------------------- trial lists


def test_read_trials(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a/1.wav a/2.wav\n\n0 a/1.wav b/3.wav\n0 b/3.wav a/2.wav\n")
    trials = read_trials(path)
    assert trials.labels.tolist() == [1, 0, 0]
    assert trials.enrol == ["a/1.wav", "a/1.wav", "b/3.wav"]
    assert trials.test == ["a/2.wav", "b/3.wav", "a/2.wav"]
    assert trials.utterances == ["a/1.wav", "a/2.wav", "b/3.wav"]
    assert len(trials) == 3


@pytest.mark.parametrize(
    "content, message",
    [
        ("1 a.wav b.wav\n1 a.wav\n", r"trials.txt, line 2: expected 3 fields"),
        ("1 a.wav b.wav\n\n0 a.wav b.wav c.wav\n", r"trials.txt, line 3: expected 3 fields"),
        (
            "1 a.wav b.wav\n2 a.wav b.wav\n",
            r"trials.txt, line 2: the label must be 0 or 1, got '2'",
        ),
        ("target a.wav b.wav\n", r"trials.txt, line 1: the label must be 0 or 1"),
        ("\n\n", "has no trials"),
    ],
)
def test_read_trials_errors(tmp_path, content, message):
    path = tmp_path / "trials.txt"
    path.write_text(content)
    with pytest.raises(TrialListError, match=message):
        read_trials(path)


def test_read_trials_missing_file(tmp_path):
    with pytest.raises(TrialListError, match="does not exist"):
        read_trials(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- AS-Norm


def naive_as_norm(enrol, test, cohort, top_n, exclude=None, ddof=0):
    """Per trial: cohort scores of each side, top N, mean/std, normalise."""
    out = []
    for i, (e, t) in enumerate(zip(enrol, test)):
        score = e @ t / np.linalg.norm(e) / np.linalg.norm(t)
        side_stats = []
        for side in (e, t):
            cohort_scores = cohort @ side / np.linalg.norm(cohort, axis=1) / np.linalg.norm(side)
            if exclude is not None:
                cohort_scores = np.delete(cohort_scores, np.unique(exclude[i]))
            top = np.sort(cohort_scores)[::-1][:top_n]
            side_stats.append((top.mean(), top.std(ddof=ddof)))
        (me, se), (mt, st) = side_stats
        out.append(((score - me) / se + (score - mt) / st) / 2)
    return np.array(out)


@pytest.mark.parametrize("ddof", [0, 1])
def test_as_norm_equals_naive_per_trial(ddof):
    rng = np.random.default_rng(0)
    utterances = rng.normal(size=(23, 6))
    cohort = normalize_embeddings(rng.normal(size=(17, 6)))
    enrol_index = rng.integers(0, 23, 60)
    test_index = rng.integers(0, 23, 60)
    normalized = normalize_embeddings(utterances)
    # Chunks of 5 utterances: exercises the chunked top-N path.
    mean, std = top_n_stats(normalized, cohort, top_n=4, chunk_size=5, correction=ddof)
    raw = trial_scores(normalized, enrol_index, test_index, chunk_size=7)
    fast = as_norm(
        raw, (mean[enrol_index], std[enrol_index]), (mean[test_index], std[test_index])
    )
    expected = naive_as_norm(utterances[enrol_index], utterances[test_index], cohort, 4, ddof=ddof)
    np.testing.assert_allclose(fast, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        raw,
        cosine_scores(utterances[enrol_index], utterances[test_index]).numpy(),
        atol=1e-6,
    )


def torch_as_norm(utterances, cohort, top_n, enrol, test, chunk_size):
    """The torch implementation the numpy one replaced (topk and fancy indexing)."""
    utterances, cohort = torch.as_tensor(utterances), torch.as_tensor(cohort)
    means, stds = torch.empty(len(utterances)), torch.empty(len(utterances))
    for start in range(0, len(utterances), chunk_size):
        top = torch.topk(utterances[start : start + chunk_size] @ cohort.T, top_n, dim=1).values
        means[start : start + chunk_size] = top.mean(dim=1)
        stds[start : start + chunk_size] = top.std(dim=1, correction=0)
    enrol, test = torch.as_tensor(enrol), torch.as_tensor(test)
    raw = (utterances[enrol] * utterances[test]).sum(dim=1)
    return (((raw - means[enrol]) / stds[enrol] + (raw - means[test]) / stds[test]) / 2).numpy()


def test_numpy_as_norm_equals_the_torch_implementation():
    rng = np.random.default_rng(4)
    utterances = normalize_embeddings(rng.normal(size=(300, 16)))
    cohort = normalize_embeddings(rng.normal(size=(120, 16)))
    enrol, test = rng.integers(0, 300, 2000), rng.integers(0, 300, 2000)
    mean, std = top_n_stats(utterances, cohort, top_n=30, chunk_size=64)
    fast = as_norm(trial_scores(utterances, enrol, test), (mean[enrol], std[enrol]), (mean[test], std[test]))
    # Equal up to float32 rounding (both compute in float32).
    np.testing.assert_allclose(
        fast, torch_as_norm(utterances, cohort, 30, enrol, test, 64), rtol=1e-6, atol=1e-6
    )


def test_top_n_stats_with_excluded_cohort_rows():
    rng = np.random.default_rng(1)
    enrol = rng.normal(size=(12, 5))
    test = rng.normal(size=(12, 5))
    cohort = normalize_embeddings(rng.normal(size=(9, 5)))
    exclude = rng.integers(0, 9, size=(12, 2))
    exclude[0] = [3, 3]  # both sides of a target pair: the same speaker
    enrol_n, test_n = normalize_embeddings(enrol), normalize_embeddings(test)
    enrol_stats = top_n_stats(enrol_n, cohort, 3, chunk_size=4, exclude=exclude)
    test_stats = top_n_stats(test_n, cohort, 3, chunk_size=4, exclude=exclude)
    fast = as_norm((enrol_n * test_n).sum(1), enrol_stats, test_stats)
    np.testing.assert_allclose(
        fast, naive_as_norm(enrol, test, cohort, 3, exclude), rtol=1e-4, atol=1e-5
    )


def test_top_n_larger_than_cohort_is_an_error():
    with pytest.raises(ValueError, match="top_n must be between 1 and the cohort size"):
        top_n_stats(torch.randn(3, 4), torch.randn(5, 4), top_n=6)


def test_speaker_cohort_and_mean_subtraction():
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(10, 4))
    speakers = ["s1", "s2"] * 5
    normalized = normalize_embeddings(embeddings, embeddings.mean(0))
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-6)
    cohort, names = speaker_cohort(normalized, speakers)
    assert names == ["s1", "s2"]
    expected = normalized[1::2].mean(0)
    np.testing.assert_allclose(cohort[1], expected / np.linalg.norm(expected), rtol=1e-5)


# --------------------------------------------------------------------------- QMF


def miscalibrated_trials(seed, size):
    """Scores whose non-target level rises as the utterances get shorter.

    A single threshold on the AS-Norm score suits neither short nor long
    trials; the log-duration features let QMF shift it per trial.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], size // 2)
    durations = rng.uniform(1.0, 20.0, size=(size, 2))
    shift = -1.5 * np.log(durations).sum(axis=1)
    scores = 2.0 * labels + shift + rng.normal(size=size)
    quality = [embedding_quality(rng.normal(size=(size, 8))) for _ in range(2)]
    features = qmf_features(scores, durations[:, 0], durations[:, 1], *quality)
    return features, labels


def cllr(llrs, labels):
    """Log-likelihood-ratio cost (bits) of scores read as natural-log LLRs."""
    targets, nontargets = llrs[labels == 1], llrs[labels == 0]
    return (
        np.mean(np.logaddexp(0, -targets)) + np.mean(np.logaddexp(0, nontargets))
    ) / (2 * np.log(2))


@pytest.mark.parametrize("solver, standardize", [("lbfgs", True), ("liblinear", False)])
def test_qmf_improves_miscalibrated_scores(tmp_path, solver, standardize):
    train_features, train_labels = miscalibrated_trials(0, 4000)
    test_features, test_labels = miscalibrated_trials(1, 4000)
    calibrator = QMFCalibrator(seed=0, solver=solver, standardize=standardize)
    calibrator.fit(train_features, train_labels)
    raw, calibrated = test_features[:, 0], calibrator.score(test_features)
    raw_eer = compute_eer(raw, test_labels)[0]
    qmf_eer = compute_eer(calibrated, test_labels)[0]
    assert qmf_eer < 0.7 * raw_eer, (raw_eer, qmf_eer)
    qmf_dcf = compute_min_dcf(calibrated, test_labels, 0.05)[0]
    assert qmf_dcf < compute_min_dcf(raw, test_labels, 0.05)[0]
    # Calibrated scores are usable LLRs: Cllr well below 1 bit, unlike the raw scores.
    assert cllr(calibrated, test_labels) < 0.6 < cllr(raw, test_labels)

    path = tmp_path / "qmf.json"
    calibrator.save(path)
    loaded = QMFCalibrator.load(path)
    np.testing.assert_allclose(loaded.score(test_features), calibrated, rtol=1e-12)
    assert (loaded.solver, loaded.standardize) == (solver, standardize)
    assert json.loads(path.read_text())["features"][0] == "as_norm_score"


def test_qmf_without_standardisation_is_sklearn_on_raw_features():
    """The reference protocol's fit: liblinear on the raw features, as the authors' code."""
    from sklearn.linear_model import LogisticRegression

    features, labels = miscalibrated_trials(2, 600)
    ours = QMFCalibrator(seed=5, solver="liblinear", standardize=False).fit(features, labels)
    theirs = LogisticRegression(random_state=5, solver="liblinear", max_iter=1000).fit(features, labels)
    np.testing.assert_allclose(ours.score(features), theirs.decision_function(features), rtol=1e-10)


def test_qmf_errors(tmp_path):
    with pytest.raises(ValueError, match=r"QMF features must be \(pairs, 9\)"):
        QMFCalibrator().fit(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(RuntimeError, match="before fit"):
        QMFCalibrator().score(np.zeros((1, 9)))
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"features": ["x"]}))
    with pytest.raises(ValueError, match="is not a QMF calibration"):
        QMFCalibrator.load(path)
    calibrator = QMFCalibrator().fit(*miscalibrated_trials(3, 100))
    calibrator.save(path)
    state = json.loads(path.read_text())
    del state["solver"]
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"other.json: QMF calibration without \['solver'\]"):
        QMFCalibrator.load(path)


def test_training_pairs():
    speakers = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 1 + ["d"] * 4)
    first, second, labels = sample_training_pairs(speakers, 400, seed=3)
    assert labels.sum() == 200
    same = speakers[first] == speakers[second]
    assert np.array_equal(same, labels == 1)
    assert np.all(first != second)
    assert "c" not in set(speakers[first[labels == 1]])  # one utterance: no target pair
    again = sample_training_pairs(speakers, 400, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((first, second, labels), again))


def test_nontarget_pairs_drawn_by_speaker():
    # One speaker with 90 % of the utterances: by utterance it is in most non-target
    # pairs, by speaker (the reference's draw) in about 2 of 4 sides' worth.
    speakers = np.array(["big"] * 90 + ["b"] * 4 + ["c"] * 3 + ["d"] * 3)
    shares = {}
    for draw in ("utterance", "speaker"):
        first, second, labels = sample_training_pairs(speakers, 8000, seed=1, nontargets_by=draw)
        nontarget = labels == 0
        assert np.all(speakers[first[nontarget]] != speakers[second[nontarget]])
        assert np.array_equal(speakers[first] == speakers[second], labels == 1)
        shares[draw] = np.mean(speakers[first[nontarget]] == "big")
    assert shares["utterance"] > 0.8
    assert shares["speaker"] == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError, match="nontargets_by"):
        sample_training_pairs(speakers, 10, seed=1, nontargets_by="pair")


# --------------------------------------------------------------------------- embeddings


def write_wavs(folder, durations, sample_rate=16000, seed=0):
    """Uniform noise of the given durations; the (relative name, path) of each file."""
    rng = np.random.default_rng(seed)
    return [
        (f"spk/utt{index}.wav", str(write_audio(folder / f"utt{index}.wav", rng.uniform(-0.5, 0.5, int(duration * sample_rate)), sample_rate)))
        for index, duration in enumerate(durations)
    ]


LOAD = functools.partial(load_audio, target_sample_rate=16000)


class StatsEmbedder:
    """Mean, std and length of the valid samples: independent of padding, if lengths are used."""

    def __init__(self, fail_after=None):
        self.calls = []
        self.fail_after = fail_after

    def __call__(self, wavs, wav_lens):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append((wavs.shape, wav_lens.clone()))
        rows = []
        for wav, rel in zip(wavs, wav_lens):
            valid = wav[: int(round(rel.item() * wavs.shape[1]))]
            seconds = torch.tensor(valid.numel() / 16000.0)
            rows.append(torch.stack([valid.mean(), valid.std(), seconds]))
        return torch.stack(rows)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_extract_embeddings_batches_by_length_and_uses_lengths(tmp_path, num_workers):
    durations = [0.3, 1.2, 0.5, 1.0, 0.4, 0.9, 0.45, 1.1]
    utterances = write_wavs(tmp_path, durations)
    embedder = StatsEmbedder()
    table = extract_embeddings(
        utterances, embedder, LOAD, tmp_path / "cache", "toy", batch_size=2,
        max_batch_seconds=2.0, num_workers=num_workers,
    )
    assert table.ids == [utt for utt, _ in utterances]
    np.testing.assert_allclose(table.embeddings[:, 2], durations, atol=1e-4)
    np.testing.assert_allclose(table.durations, durations, atol=1e-4)
    # SpeechBrain's DynamicBatchSampler: at most batch_size utterances and
    # max_batch_seconds of padded audio, similar lengths together, longest first.
    seen = sorted(round(float(rel * shape[1]) / 16000, 2) for shape, lens in embedder.calls for rel in lens)
    assert seen == sorted(durations)
    for shape, lens in embedder.calls:
        assert shape[0] <= 2 and shape[0] * shape[1] <= 2.0 * 16000
        lengths = lens * shape[1]
        assert lengths.max() <= 1.25 * lengths.min() + 1
    longest = [shape[1] for shape, _ in embedder.calls]
    assert longest == sorted(longest, reverse=True)
    one_by_one = StatsEmbedder()
    alone = extract_embeddings(utterances, one_by_one, LOAD, batch_size=1)
    assert all(shape[0] == 1 for shape, _ in one_by_one.calls)
    np.testing.assert_allclose(table.embeddings, alone.embeddings, rtol=1e-5, atol=1e-6)


def test_extract_embeddings_cache_survives_a_crash(tmp_path):
    utterances = write_wavs(tmp_path, [0.3, 0.6, 0.5, 0.4])
    crashing = StatsEmbedder(fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_embeddings(
            utterances, crashing, LOAD, tmp_path / "cache", "toy", batch_size=1, shard_size=1
        )
    resumed = StatsEmbedder()
    table = extract_embeddings(utterances, resumed, LOAD, tmp_path / "cache", "toy", batch_size=1)
    assert len(resumed.calls) == 2  # only the two utterances not finished before the crash
    rerun = StatsEmbedder()
    again = extract_embeddings(utterances, rerun, LOAD, tmp_path / "cache", "toy", batch_size=1)
    assert rerun.calls == []
    np.testing.assert_array_equal(table.embeddings, again.embeddings)
    with pytest.raises(ValueError, match="was made with"):
        extract_embeddings(utterances, rerun, LOAD, tmp_path / "cache", "another-model")


def test_cache_entries_follow_the_audio_not_the_id(tmp_path):
    """Same ids, other audio: a copy of the data, a replaced file, a touched file."""
    first = write_wavs(tmp_path / "a", [0.3, 0.5], seed=1)
    embedder = StatsEmbedder()
    cached = extract_embeddings(first, embedder, LOAD, tmp_path / "cache", "toy")
    # The same relative ids under another data folder, with other audio.
    copy = write_wavs(tmp_path / "b", [0.3, 0.5], seed=2)
    assert [utt for utt, _ in copy] == [utt for utt, _ in first]
    again = StatsEmbedder()
    table = extract_embeddings(copy, again, LOAD, tmp_path / "cache", "toy")
    assert sum(shape[0] for shape, _ in again.calls) == 2
    assert not np.allclose(table.embeddings[:, 0], cached.embeddings[:, 0])
    fresh = extract_embeddings(copy, StatsEmbedder(), LOAD)
    np.testing.assert_array_equal(table.embeddings, fresh.embeddings)
    # A file rewritten in place (same size), or only touched: embedded again.
    path = copy[1][1]
    soundfile.write(path, np.full(8000, 0.25), 16000)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rewritten = StatsEmbedder()
    table = extract_embeddings(copy, rewritten, LOAD, tmp_path / "cache", "toy")
    assert sum(shape[0] for shape, _ in rewritten.calls) == 1
    assert table.embeddings[1, 0] == pytest.approx(0.25, abs=1e-4)
    # Unchanged files are served from the cache.
    unchanged = StatsEmbedder()
    extract_embeddings(copy, unchanged, LOAD, tmp_path / "cache", "toy")
    assert unchanged.calls == []


def test_non_finite_audio_and_embeddings_are_refused(tmp_path):
    utterances = write_wavs(tmp_path, [0.3, 0.4])
    samples = np.zeros(4800, dtype=np.float32)
    samples[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")
    bad = utterances + [("spk/nan.wav", str(tmp_path / "nan.wav"))]
    with pytest.raises(NonFiniteError, match=r"nan.wav: 1 of 4800 samples are NaN or infinite"):
        extract_embeddings(bad, StatsEmbedder(), LOAD, tmp_path / "cache", "toy", batch_size=1)

    def nan_for_short(wavs, wav_lens):
        output = StatsEmbedder()(wavs, wav_lens)
        output[wav_lens * wavs.shape[1] < 5000] = float("nan")
        return output

    with pytest.raises(NonFiniteError, match=r"NaN or infinite embedding for \[.*utt0.wav'\]"):
        extract_embeddings(
            utterances, nan_for_short, LOAD, tmp_path / "cache", "toy", batch_size=1, shard_size=1
        )
    # The longer file's embedding was finished and cached, the NaN one was not.
    cached = [np.load(shard)["embeddings"] for shard in sorted((tmp_path / "cache").glob("shard-*.npz"))]
    assert len(cached) == 1 and np.isfinite(cached[0]).all()


def test_extract_embeddings_chunks_long_files(tmp_path):
    utterances = write_wavs(tmp_path, [1.0, 0.2])
    embedder = StatsEmbedder()
    table = extract_embeddings(
        utterances, embedder, LOAD, tmp_path / "cache", "toy", max_chunk_seconds=0.3
    )
    # 1.0 s > 0.3 s: ceil(1.0 / 0.3) = 4 chunks of 0.25 s, embedded together.
    assert embedder.calls[0][0] == (4, 4000)
    wav = torch.as_tensor(soundfile.read(utterances[0][1])[0], dtype=torch.float32)
    chunk_means = wav[:16000].reshape(4, 4000).mean(dim=1)
    assert table.embeddings[0, 0] == pytest.approx(chunk_means.mean().item(), abs=1e-6)
    assert table.embeddings[0, 2] == pytest.approx(0.25)
    assert table.embeddings[1, 2] == pytest.approx(0.2)
    # Issue 13.3: chunks obey max_batch_seconds (0.5 s: two 0.25 s chunks per call), same embedding.
    bounded = StatsEmbedder()
    again = extract_embeddings(utterances, bounded, LOAD, max_chunk_seconds=0.3, max_batch_seconds=0.5)
    assert [shape for shape, _ in bounded.calls[:2]] == [(2, 4000), (2, 4000)]
    np.testing.assert_allclose(again.embeddings, table.embeddings, atol=1e-6)


def test_missing_files_are_listed_before_any_work(tmp_path):
    utterances = write_wavs(tmp_path, [0.3])
    utterances += [(f"x/{i}.wav", str(tmp_path / f"gone{i}.wav")) for i in (1, 2)]
    embedder = StatsEmbedder()
    with pytest.raises(MissingAudioError, match="2 of 3 audio files are missing") as error:
        extract_embeddings(utterances, embedder, LOAD, tmp_path / "cache", "toy")
    assert "gone1.wav" in str(error.value) and "gone2.wav" in str(error.value)
    assert embedder.calls == []
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    with pytest.raises(MissingAudioError, match="unreadable"):
        extract_embeddings(
            [("b.wav", str(tmp_path / "broken.wav"))], embedder, LOAD, tmp_path / "cache", "toy"
        )


# --------------------------------------------------------------------------- report


def test_write_results_and_det_plot(tmp_path):
    scores, labels = random_trials(5, 200)
    results = {"O": {"cosine": {"eer": 0.1, "min_dcf_0.01": 0.5, "min_dcf_0.05": 0.3}}}
    markdown, json_path = write_results(results, tmp_path, [0.01, 0.05], run_info={"model": "m"})
    lines = markdown.read_text().splitlines()
    assert lines[0] == "| Trial list | Scoring | EER (%) | minDCF (p=0.01) | minDCF (p=0.05) |"
    assert lines[2] == "| O | cosine | 10.000 | 0.5000 | 0.3000 |"
    assert json.loads(json_path.read_text()) == results
    assert json.loads((tmp_path / "run_info.json").read_text()) == {"model": "m"}
    curves = {"cosine": (scores, labels), "other": (-scores, labels)}
    png = plot_det(curves, {"cosine": 0.1, "other": 0.9}, tmp_path / "det.png", "O")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_results(results, tmp_path, [0.01], heading="Scoring protocol: default.")
    assert markdown.read_text().splitlines()[:3] == [
        "Scoring protocol: default.", "", "| Trial list | Scoring | EER (%) | minDCF (p=0.01) |"
    ]


def test_evaluate_scores_eer_rules():
    scores, labels = random_trials(9, 120)
    assert evaluate_scores(scores, labels, [0.01])["eer"] == compute_eer(scores, labels)[0]
    assert evaluate_scores(scores, labels, [0.01], "max")["eer"] == reference_eer(scores, labels)[0]
    with pytest.raises(ValueError, match="eer_rule"):
        evaluate_scores(scores, labels, [0.01], "median")
