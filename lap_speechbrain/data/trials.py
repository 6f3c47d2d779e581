"""Trial lists in the VoxCeleb format: one ``label enrol test`` trial per line.

Authors
 * lap-speechbrain contributors 2026
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Tuple, Union

import numpy as np

from lap_speechbrain.fileio import atomic_open

Trial = Tuple[int, str, str]


class TrialListError(ValueError):
    """A trial list that cannot be read; the message names file and line."""


@dataclass
class Trials:
    """A parsed trial list.

    Arguments
    ---------
    labels : np.ndarray
        (T,) int64, 1 for target trials, 0 for non-target trials.
    enrol : list of str
        (T,) enrolment utterances, paths relative to the audio root.
    test : list of str
        (T,) test utterances, paths relative to the audio root.
    path : str
        The file the trials were read from ("" when built in memory).
    """

    labels: np.ndarray
    enrol: List[str]
    test: List[str]
    path: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self) -> Iterator[Trial]:
        """The trials as ``(label, enrol, test)`` tuples, in file order."""
        return iter(zip(self.labels.tolist(), self.enrol, self.test))

    @property
    def utterances(self) -> List[str]:
        """Every utterance the trials use, once, sorted."""
        return sorted(set(self.enrol) | set(self.test))


def read_trials(path: Union[str, Path]) -> Trials:
    """Reads a VoxCeleb-format trial list (``label enrol test`` per line).

    Blank lines are skipped; everything else must have exactly three
    whitespace-separated fields and a label of 0 or 1.

    Arguments
    ---------
    path : str or Path
        The trial list file.

    Returns
    -------
    Trials
        Labels, enrolment and test utterances in file order.

    Raises
    ------
    TrialListError
        The file is missing or empty, or a line has the wrong number of
        fields or a label other than 0/1 (the message names file and line).

    Example
    -------
    >>> import tempfile, os
    >>> folder = str(getfixture("tmpdir"))
    >>> path = os.path.join(folder, "trials.txt")
    >>> _ = open(path, "w").write("1 a/x/1.wav a/y/2.wav\\n0 a/x/1.wav b/z/3.wav\\n")
    >>> trials = read_trials(path)
    >>> trials.labels.tolist(), trials.utterances
    ([1, 0], ['a/x/1.wav', 'a/y/2.wav', 'b/z/3.wav'])
    """
    path = Path(path)
    if not path.is_file():
        raise TrialListError(f"trial list {path} does not exist")
    labels, enrol, test = [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise TrialListError(
                    f"{path}, line {number}: expected 3 fields 'label enrol test', "
                    f"got {len(fields)}: {line.strip()!r}"
                )
            if fields[0] not in ("0", "1"):
                raise TrialListError(
                    f"{path}, line {number}: the label must be 0 or 1, got {fields[0]!r}"
                )
            labels.append(int(fields[0]))
            enrol.append(fields[1])
            test.append(fields[2])
    if not labels:
        raise TrialListError(f"trial list {path} has no trials")
    return Trials(np.asarray(labels, dtype=np.int64), enrol, test, str(path))


def write_trials(trials: Iterable[Trial], path: Union[str, Path]) -> str:
    """Writes a VoxCeleb-format trial list (``label enrol test`` per line) atomically.

    Arguments
    ---------
    trials : iterable of (label, enrol, test)
        The trials.
    path : str or Path
        Destination.

    Returns
    -------
    str
        ``path``.
    """
    with atomic_open(path) as file:
        file.writelines(f"{label} {enrol} {test}\n" for label, enrol, test in trials)
    return str(path)
