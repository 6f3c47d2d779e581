"""Trial lists in the VoxCeleb format: one ``label enrol test`` trial per line.

Authors
 * lap-speechbrain contributors 2026
"""

import codecs
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Tuple, Union

import numpy as np

from lap_speechbrain.fileio import atomic_open

logger = logging.getLogger(__name__)

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


def _path_problem(entry: str) -> str:
    """Why ``entry`` is not a path relative to the audio folder ("" if it is)."""
    if entry.startswith(("/", "\\")) or entry[1:2] == ":":  # POSIX, UNC or drive-letter path
        return "is an absolute path"
    if ".." in entry and ".." in entry.replace("\\", "/").split("/"):
        return "leaves the audio folder ('..')"
    return ""


def _check_paths(path: Path, text: str, numbers: List[int], enrol: List[str], test: List[str]) -> None:
    """Raises at the first utterance named by an absolute or ``..`` path."""
    # Every such path holds one of these; scanning the text for them costs a
    # third of checking the 1.2 M fields of VoxCeleb1-E one by one.
    if not any(suspect in text for suspect in ("..", " /", "\t/", " \\", "\t\\", ":")):
        return
    for number, first, second in zip(numbers, enrol, test):
        for entry in (first, second):
            problem = _path_problem(entry)
            if problem:
                raise TrialListError(
                    f"{path}, line {number}: {entry!r} {problem}; trial lists name utterances "
                    "relative to the audio folder (e.g. id10270/x6uYqmx31kE/00001.wav)"
                )


def _check_repeats(path: Path, numbers: List[int], labels: List[int], enrol: List[str], test: List[str]) -> None:
    """Raises if a pair comes back with the other label; warns if it comes back with the same."""
    pairs = [(e, t) if e < t else (t, e) for e, t in zip(enrol, test)]
    if len(set(pairs)) == len(pairs):
        return
    first_index: Dict[Tuple[str, str], int] = {}
    repeats = []
    for index, pair in enumerate(pairs):
        earlier = first_index.setdefault(pair, index)
        if earlier == index:
            continue
        if labels[earlier] != labels[index]:
            raise TrialListError(
                f"{path}, line {numbers[index]}: the pair of line {numbers[earlier]} again, with the other label"
            )
        repeats.append((numbers[index], numbers[earlier]))
    logger.warning(
        "%s: %d trial(s) repeat an earlier pair (in either order) and are counted again, e.g. line %d repeats line %d",
        path, len(repeats), *repeats[0],
    )


def read_trials(path: Union[str, Path]) -> Trials:
    """Reads a VoxCeleb-format trial list (``label enrol test`` per line).

    Fields are separated by spaces or tabs; blank lines, Windows line ends
    and a UTF-8 byte-order mark are accepted. Every other line must have
    exactly three fields, a label of 0 or 1 and two different utterances
    named relative to the audio folder (no absolute path, no ``..``). A pair
    listed again (in either order) with the same label is counted once more
    and gets a warning; with the other label it is an error. The list must
    hold both target and non-target trials (no EER or minDCF otherwise).

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
        The file is missing, not UTF-8, empty or of one class, or a line
        breaks a rule above (the message names file and line).

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
    content = path.read_bytes()
    if content.startswith(codecs.BOM_UTF8):
        content = content[len(codecs.BOM_UTF8):]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        number = content.count(b"\n", 0, error.start) + 1
        raise TrialListError(f"{path}, line {number}: not UTF-8 text ({error.reason})") from None
    labels: List[int] = []
    enrol: List[str] = []
    test: List[str] = []
    numbers: List[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise TrialListError(
                f"{path}, line {number}: expected 3 fields 'label enrol test', "
                f"got {len(fields)}: {line.strip()!r}"
            )
        if fields[0] not in ("0", "1"):
            raise TrialListError(f"{path}, line {number}: the label must be 0 or 1, got {fields[0]!r}")
        if fields[1] == fields[2]:
            raise TrialListError(f"{path}, line {number}: compares {fields[1]} with itself")
        labels.append(int(fields[0]))
        enrol.append(fields[1])
        test.append(fields[2])
        numbers.append(number)
    if not labels:
        raise TrialListError(f"trial list {path} has no trials")
    if len(set(labels)) == 1:
        raise TrialListError(
            f"trial list {path} has only label {labels[0]} ({len(labels)} trials): an EER or minDCF "
            "needs both target (1) and non-target (0) trials"
        )
    _check_paths(path, text, numbers, enrol, test)
    _check_repeats(path, numbers, labels, enrol, test)
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
