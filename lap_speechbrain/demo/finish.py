"""What a training run can do after its last stage: score the test lists, compare
with a no-training baseline, and verify a few trials with the exported model.

The training recipe runs these steps when its yaml asks for them (the offline
demo does; the VoxCeleb configs leave them to ``recipes/speaker_verification.py``).

Authors
 * lap-speechbrain contributors 2026
"""

from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from lap_speechbrain.demo.mfcc_baseline import mfcc_baseline_embeddings
from lap_speechbrain.scoring import evaluate_scores, read_trials
from lap_speechbrain.scoring.report import Results

PathLike = Union[str, Path]
BASELINE = "MFCC mean+std cosine (no training)"


def mfcc_baseline_results(
    trial_lists: Mapping[str, PathLike], data_folder: PathLike, p_targets: Sequence[float]
) -> Results:
    """EER and minDCF of the MFCC-statistics cosine baseline on each trial list.

    Arguments
    ---------
    trial_lists : mapping
        Name -> VoxCeleb-format trial list (paths relative to ``data_folder``).
    data_folder : str or Path
        Audio root of the trials.
    p_targets : sequence of float
        minDCF priors.

    Returns
    -------
    Results
        ``{list: {BASELINE: metrics}}`` in the format of the scoring reports.
    """
    results: Results = {}
    for name, path in trial_lists.items():
        trials = read_trials(path)
        index = {utterance: row for row, utterance in enumerate(trials.utterances)}
        embeddings = mfcc_baseline_embeddings(
            [Path(data_folder) / utterance for utterance in trials.utterances], desc=f"MFCC baseline {name}"
        )
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        enrol = embeddings[[index[u] for u in trials.enrol]]
        test = embeddings[[index[u] for u in trials.test]]
        scores = (enrol * test).sum(axis=1)
        results[name] = {BASELINE: evaluate_scores(scores, trials.labels, p_targets)}
    return results


def verify_examples(
    model_folder: PathLike, trial_list: PathLike, data_folder: PathLike, count: int
) -> List[Tuple[int, str, str, float, bool]]:
    """Verifies the first ``count`` target and ``count`` non-target trials of a list.

    Uses the exported model through ``LAPSpeakerRecognition.verify_files``,
    exactly as a user would, so the threshold is the one stored at export.

    Arguments
    ---------
    model_folder : str or Path
        An exported model folder.
    trial_list : str or Path
        VoxCeleb-format trial list.
    data_folder : str or Path
        Audio root of the trials.
    count : int
        Trials of each label to verify.

    Returns
    -------
    list of tuple
        ``(label, enrol, test, score, same_speaker)`` per verified trial.
    """
    from lap_speechbrain.inference import LAPSpeakerRecognition

    verification = LAPSpeakerRecognition.from_hparams(source=str(model_folder))
    trials = read_trials(trial_list)
    chosen: Dict[int, List[int]] = {1: [], 0: []}
    for row, label in enumerate(trials.labels.tolist()):
        if len(chosen[label]) < count:
            chosen[label].append(row)
    outcomes = []
    for row in chosen[1] + chosen[0]:
        enrol, test = trials.enrol[row], trials.test[row]
        score, decision = verification.verify_files(
            str(Path(data_folder) / enrol), str(Path(data_folder) / test)
        )
        outcomes.append((int(trials.labels[row]), enrol, test, float(score), bool(decision)))
    return outcomes
