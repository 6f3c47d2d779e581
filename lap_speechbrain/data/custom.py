"""Preparation of a custom corpus laid out as ``<root>/<speaker>/**/*.{wav,flac}``.

Some speakers are held out from training (chosen by a seeded draw) and a
balanced VoxCeleb-format trial list is drawn over their utterances; the
training recipe selects checkpoints by the EER on that list. A trial list of
one's own can take its place (its speakers are then the held-out ones).

Authors
 * lap-speechbrain contributors 2026
"""

import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from lap_speechbrain.data.manifest import (
    PathLike,
    file_fingerprint,
    folder_fingerprint,
    is_prepared,
    mark_prepared,
    require_folder,
    require_outside,
    scan_audio,
    speaker_encoder,
    write_csv,
)
from lap_speechbrain.data.trials import Trial, Trials, read_trials, write_trials

logger = logging.getLogger(__name__)


def hold_out_speakers(
    rows: Sequence[Mapping[str, object]], num_valid_speakers: int, seed: int
) -> Tuple[List[Mapping[str, object]], List[Mapping[str, object]]]:
    """Splits manifest rows into training and validation rows by speaker.

    Arguments
    ---------
    rows : sequence of mappings
        Manifest rows (``spk_id`` is used).
    num_valid_speakers : int
        Speakers held out (at least 2, so that non-target trials exist, and
        fewer than the number of speakers).
    seed : int
        Seed of the draw; the same rows and seed give the same split.

    Returns
    -------
    train_rows, valid_rows : list
        Rows of the remaining and of the held-out speakers.

    Example
    -------
    >>> rows = [{"ID": f"s{i}/u", "spk_id": f"s{i}"} for i in range(5)]
    >>> train, valid = hold_out_speakers(rows, 2, seed=1)
    >>> len(train), len(valid)
    (3, 2)
    """
    speakers = sorted({str(row["spk_id"]) for row in rows})
    if not 2 <= num_valid_speakers < len(speakers):
        raise ValueError(
            f"num_valid_speakers={num_valid_speakers}: expected at least 2 and fewer than "
            f"the {len(speakers)} speakers found"
        )
    valid = set(random.Random(seed).sample(speakers, num_valid_speakers))
    train_rows = [row for row in rows if row["spk_id"] not in valid]
    valid_rows = [row for row in rows if row["spk_id"] in valid]
    return train_rows, valid_rows


def make_trials(
    utterances: Mapping[str, Sequence[str]], num_trials: int, seed: int
) -> List[Trial]:
    """Draws distinct trials, half target (``num_trials // 2``) and half non-target.

    Arguments
    ---------
    utterances : mapping of str to sequence of str
        Utterance paths of each speaker.
    num_trials : int
        Number of trials (at least 2).
    seed : int
        Seed of the draw.

    Returns
    -------
    list of (label, enrol, test)
        In random order; no pair appears twice (in either order) and no
        utterance is compared with itself.

    Example
    -------
    >>> trials = make_trials({"a": ["a/1", "a/2"], "b": ["b/1", "b/2"]}, 4, seed=0)
    >>> sorted(label for label, _, _ in trials)
    [0, 0, 1, 1]
    """
    if num_trials < 2:
        raise ValueError(f"num_trials={num_trials}: expected at least 2 (half target, half non-target)")
    speakers = sorted(utterances)
    num_target = num_trials // 2
    num_nontarget = num_trials - num_target
    sizes = {spk: len(utterances[spk]) for spk in speakers}
    max_target = sum(n * (n - 1) // 2 for n in sizes.values())
    total = sum(sizes.values())
    max_nontarget = (total * (total - 1) // 2) - max_target
    if num_target > max_target or num_nontarget > max_nontarget:
        raise ValueError(
            f"cannot draw {num_target} target and {num_nontarget} non-target distinct trials from "
            f"{len(speakers)} speakers with {total} utterances (at most {max_target} target and "
            f"{max_nontarget} non-target pairs exist): lower num_valid_trials or hold out more speakers"
        )
    rng = random.Random(seed)
    # Speakers weighted by their number of pairs, so each distinct pair is equally likely.
    multi = [spk for spk in speakers if sizes[spk] > 1]
    pair_weights = [sizes[spk] * (sizes[spk] - 1) for spk in multi]
    utt_weights = [sizes[spk] for spk in speakers]
    seen = set()
    trials: List[Trial] = []

    def add(label: int, enrol: str, test: str) -> None:
        key = frozenset((enrol, test))
        if key not in seen:
            seen.add(key)
            trials.append((label, enrol, test))

    while len(trials) < num_target:
        (spk,) = rng.choices(multi, weights=pair_weights)
        add(1, *rng.sample(list(utterances[spk]), 2))
    while len(trials) < num_trials:
        spk_a, spk_b = rng.choices(speakers, weights=utt_weights, k=2)
        if spk_a != spk_b:
            add(0, rng.choice(utterances[spk_a]), rng.choice(utterances[spk_b]))
    rng.shuffle(trials)  # any prefix of the list is then about as balanced as the whole
    return trials


def validation_trials(
    valid_rows: Sequence[Mapping[str, object]], num_trials: int, seed: int
) -> List[Trial]:
    """Draws a balanced trial list over manifest rows; paths are ``ID`` + the file's extension.

    Arguments
    ---------
    valid_rows : sequence of mappings
        Manifest rows of the held-out speakers.
    num_trials : int
        Number of trials.
    seed : int
        Seed of the draw.

    Returns
    -------
    list of (label, enrol, test)
        Paths relative to the audio root, with extension.
    """
    utterances: Dict[str, List[str]] = defaultdict(list)
    for row in valid_rows:
        utterances[str(row["spk_id"])].append(str(row["ID"]) + Path(str(row["wav"])).suffix)
    return make_trials(utterances, num_trials, seed)


def split_by_trials(
    rows: Sequence[Mapping[str, object]], trials: Trials
) -> Tuple[List[Mapping[str, object]], List[Mapping[str, object]]]:
    """Splits manifest rows into training rows and the rows of the speakers of a trial list.

    Arguments
    ---------
    rows : sequence of mappings
        Manifest rows (``ID``, ``wav`` and ``spk_id`` are used).
    trials : Trials
        A trial list over these rows: paths are ``ID`` + the file's extension.

    Returns
    -------
    train_rows, valid_rows : list
        Rows of the speakers the list does not name, and of those it names.

    Raises
    ------
    FileNotFoundError
        Naming the utterances of the list that no row holds.
    ValueError
        If the list names every speaker.

    Example
    -------
    >>> import numpy as np
    >>> rows = [{"ID": f"s{i}/u", "wav": f"/c/s{i}/u.wav", "spk_id": f"s{i}"} for i in range(3)]
    >>> train, valid = split_by_trials(rows, Trials(np.array([0]), ["s0/u.wav"], ["s1/u.wav"]))
    >>> [row["spk_id"] for row in train], [row["spk_id"] for row in valid]
    (['s2'], ['s0', 's1'])
    """
    found = {str(row["ID"]) + Path(str(row["wav"])).suffix for row in rows}
    missing = [utterance for utterance in trials.utterances if utterance not in found]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} utterance(s) of {trials.path or 'the trial list'} are not in the corpus "
            f"(missing, unreadable or shorter than min_duration): " + ", ".join(missing[:20])
            + (" ..." if len(missing) > 20 else "")
        )
    speakers = {utterance.split("/", 1)[0] for utterance in trials.utterances}
    train_rows = [row for row in rows if row["spk_id"] not in speakers]
    valid_rows = [row for row in rows if row["spk_id"] in speakers]
    if not train_rows:
        raise ValueError(f"{trials.path or 'the trial list'} names every speaker of the corpus: none is left to train on")
    return train_rows, valid_rows


def prepare_custom_corpus(
    data_folder: PathLike,
    save_folder: PathLike,
    num_valid_speakers: Optional[int] = None,
    num_valid_trials: Optional[int] = None,
    seed: int = 1234,
    min_duration: float = 1.0,
    extensions: Sequence[str] = (".wav", ".flac"),
    num_workers: Optional[int] = None,
    valid_trial_list: Optional[PathLike] = None,
) -> Dict[str, str]:
    """Prepares a corpus laid out as ``<data_folder>/<speaker>/**/*.{wav,flac}`` for training.

    Writes into ``save_folder``: ``train.csv`` and ``valid.csv`` (manifests),
    ``valid_trials.txt`` (balanced trials over the held-out speakers, paths
    relative to ``data_folder``), ``label_encoder.txt`` (training speakers,
    sorted -> 0..N-1) and ``prepare_custom.json`` (the options; a second call
    with the same options on an unchanged corpus returns at once).

    Arguments
    ---------
    data_folder : str or Path
        The corpus root; each sub-folder is a speaker.
    save_folder : str or Path
        Where the outputs go.
    num_valid_speakers : int, optional
        Speakers held out from training for validation (needed unless
        ``valid_trial_list`` is given).
    num_valid_trials : int, optional
        Trials in ``valid_trials.txt`` (half target; needed unless
        ``valid_trial_list`` is given).
    seed : int
        Seed of the held-out speakers and of the trials.
    min_duration : float
        Shorter files (seconds) are skipped with a warning.
    extensions : sequence of str
        Audio extensions to collect.
    num_workers : int, optional
        Threads reading audio headers.
    valid_trial_list : str or Path, optional
        A trial list of one's own over the corpus (paths relative to
        ``data_folder``) to use as ``valid_trials.txt``: the speakers it names
        are held out, no others; ``num_valid_speakers`` and
        ``num_valid_trials`` are not used.

    Returns
    -------
    dict
        Paths of ``"train"``, ``"valid"``, ``"valid_trials"`` and ``"label_encoder"``.
    """
    data_folder = require_folder(data_folder, "custom corpus data_folder")
    save_folder = Path(save_folder).absolute()
    require_outside(save_folder, data_folder, "save_folder")
    outputs = {
        "train": str(save_folder / "train.csv"),
        "valid": str(save_folder / "valid.csv"),
        "valid_trials": str(save_folder / "valid_trials.txt"),
        "label_encoder": str(save_folder / "label_encoder.txt"),
    }
    valid_path = Path(valid_trial_list).expanduser().absolute() if valid_trial_list is not None else None
    if valid_path is not None and not valid_path.is_file():
        raise FileNotFoundError(f"valid_trial_list {valid_path} not found")
    if valid_path is None and (num_valid_speakers is None or num_valid_trials is None):
        raise ValueError("pass num_valid_speakers and num_valid_trials, or a valid_trial_list of your own")
    options_file = save_folder / "prepare_custom.json"
    options = {
        "data_folder": str(data_folder),
        "fingerprint": folder_fingerprint(data_folder),
        "num_valid_speakers": num_valid_speakers,
        "num_valid_trials": num_valid_trials,
        "seed": seed,
        "min_duration": min_duration,
        "extensions": sorted(extensions),
        "valid_trial_list": [str(valid_path), file_fingerprint(valid_path)] if valid_path else None,
    }
    if is_prepared(options_file, options, outputs.values()):
        logger.info("Custom corpus already prepared in %s; skipping.", save_folder)
        return outputs
    options_file.unlink(missing_ok=True)  # a crash below must not leave a stale "done" mark

    given = read_trials(valid_path) if valid_path else None  # a bad list fails before the scan
    rows = scan_audio(
        data_folder, extensions, min_duration, num_workers=num_workers, listing=save_folder / "unusable_files.txt"
    )
    if given is not None:
        train_rows, valid_rows = split_by_trials(rows, given)
        trials = list(given)
    else:
        train_rows, valid_rows = hold_out_speakers(rows, num_valid_speakers, seed)
        trials = validation_trials(valid_rows, num_valid_trials, seed)
    write_csv(train_rows, outputs["train"])
    write_csv(valid_rows, outputs["valid"])
    write_trials(trials, outputs["valid_trials"])
    speaker_encoder((row["spk_id"] for row in train_rows), outputs["label_encoder"])
    mark_prepared(options_file, options)
    logger.info(
        "Prepared %s: %d training utterances of %d speakers, %d validation trials over %d held-out speakers.",
        data_folder,
        len(train_rows),
        len({row["spk_id"] for row in train_rows}),
        len(trials),
        len({row["spk_id"] for row in valid_rows}),
    )
    return outputs
