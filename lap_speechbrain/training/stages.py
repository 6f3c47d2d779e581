"""Bookkeeping of staged training: stage order, stage records, resume, classes.

A training recipe (``recipes/train_speaker_embeddings.py``) runs its stages in
order, each in its own checkpoint folder ``<save_folder>/<stage>/``. When a
stage finishes, the checkpoint it selected is recorded in
``<stage folder>/stage_done.json`` (written atomically); a recorded stage is
never run again, so re-running the same command after a crash continues in
the right stage, and the next stage starts from the recorded checkpoint.

The functions here take explicit arguments, so a recipe that swaps the
``Brain``, the datasets or the sampler keeps using them unchanged.

Authors
 * lap-speechbrain contributors 2026
"""

import json
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from lap_speechbrain.fileio import atomic_write_json

PathLike = Union[str, Path]
DONE_FILE = "stage_done.json"


def check_stage_order(stages: Sequence[str], run_stages: Sequence[str]) -> List[str]:
    """Checks that ``run_stages`` is a non-empty, ordered subset of ``stages``.

    Arguments
    ---------
    stages : sequence of str
        Every stage, in training order.
    run_stages : sequence of str
        The stages to run now.

    Returns
    -------
    list of str
        ``run_stages``.

    Raises
    ------
    ValueError
        Naming the unknown stages and the valid ones.

    Example
    -------
    >>> check_stage_order(["frozen", "joint", "lmft"], ["frozen", "joint"])
    ['frozen', 'joint']
    """
    order, run = list(stages), list(run_stages)
    unknown = [name for name in run if name not in order]
    if unknown or not run:
        raise ValueError(
            f"run_stages={run}: unknown stages {unknown}; expected a non-empty subset of stages={order}"
        )
    if run != [name for name in order if name in run]:
        raise ValueError(f"run_stages={run} must follow the order of stages={order}")
    return run


def stage_record(stage_folder: PathLike) -> Optional[dict]:
    """The record of a finished stage (``<stage_folder>/stage_done.json``), or None."""
    path = Path(stage_folder) / DONE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_stage_record(stage_folder: PathLike, record: dict) -> Path:
    """Records a finished stage, atomically; returns the record file."""
    return atomic_write_json(Path(stage_folder) / DONE_FILE, record)


def start_record(save_folder: PathLike, stages: Sequence[str], name: str) -> Optional[dict]:
    """The record of the stage that ``name`` starts from (the one before it), or None.

    Arguments
    ---------
    save_folder : str or Path
        Holds one folder per stage.
    stages : sequence of str
        Every stage, in training order.
    name : str
        The stage about to run.

    Returns
    -------
    dict or None
        None for the first stage (it starts from the pre-trained SSL model).

    Raises
    ------
    RuntimeError
        If the previous stage has not finished.
    """
    position = list(stages).index(name)
    if position == 0:
        return None
    previous = stages[position - 1]
    record = stage_record(Path(save_folder) / previous)
    if record is None:
        raise RuntimeError(
            f"stage {name!r} starts from the selected model of stage {previous!r}, which has not "
            f"finished ({Path(save_folder) / previous / DONE_FILE} is missing): add {previous!r} to run_stages"
        )
    return record


def finished_records(save_folder: PathLike, stages: Sequence[str], last: str) -> List[dict]:
    """The records of the finished stages up to ``last``, in training order."""
    order = list(stages)
    records = [stage_record(Path(save_folder) / name) for name in order[: order.index(last) + 1]]
    return [record for record in records if record is not None]


def stage_classes(
    num_speakers: int,
    num_speeds: int,
    speed_perturb: bool,
    previous_classes: Optional[int] = None,
    keep_previous_classes: bool = True,
) -> int:
    """Number of classes of a stage's classifier.

    A stage that perturbs speed has one class per speaker and speed
    (N * (1 + num_speeds)). A stage that starts from a classifier with more
    classes keeps them when ``keep_previous_classes`` (as the reference does:
    a speaker's 0.9x/1.1x centres stay in the softmax as negatives), and drops
    them otherwise.

    Arguments
    ---------
    num_speakers : int
        Training speakers N.
    num_speeds : int
        Speeds other than 1 (two in the paper).
    speed_perturb : bool
        Whether this stage perturbs speed.
    previous_classes : int or None
        Classes of the classifier the stage starts from (None: a new one).
    keep_previous_classes : bool
        Keep the previous classifier's extra classes.

    Returns
    -------
    int

    Example
    -------
    >>> stage_classes(10, 2, speed_perturb=True)
    30
    >>> stage_classes(10, 2, speed_perturb=False, previous_classes=30)
    30
    >>> stage_classes(10, 2, speed_perturb=False, previous_classes=30, keep_previous_classes=False)
    10
    """
    classes = num_speakers * (1 + num_speeds) if speed_perturb else num_speakers
    if previous_classes is not None and keep_previous_classes:
        classes = max(classes, previous_classes)
    return classes


def class_labels(speakers: Sequence[str], num_classes: int) -> List[str]:
    """Names of the classes: the speakers, then ``<speaker>@speed<k>`` per extra speed.

    Class ``label + N * k`` is speaker ``label`` played at the k-th extra
    speed (:func:`lap_speechbrain.data.pipelines.speed_class`).

    Example
    -------
    >>> class_labels(["a", "b"], 6)
    ['a', 'b', 'a@speed1', 'b@speed1', 'a@speed2', 'b@speed2']
    """
    if not speakers or num_classes % len(speakers):
        raise ValueError(f"{num_classes} classes are not a multiple of the {len(speakers)} speakers")
    speeds = num_classes // len(speakers)
    return list(speakers) + [f"{speaker}@speed{k}" for k in range(1, speeds) for speaker in speakers]


def speaker_names(label_encoder: CategoricalEncoder) -> List[str]:
    """The encoder's labels in index order (speaker 0 first)."""
    return [label_encoder.ind2lab[index] for index in range(len(label_encoder))]


def load_selected(checkpoint: PathLike, embedding_model: torch.nn.Module, classifier: torch.nn.Module) -> None:
    """Loads a previous stage's selected model into new modules (weights only).

    The classifier may differ in class count (speed classes dropped or added):
    the rows of the classes both have (the original-speed speakers first, then
    each speed) are copied; the others keep their fresh initialisation.

    Arguments
    ---------
    checkpoint : str or Path
        A checkpoint folder with ``embedding_model.ckpt`` and ``classifier.ckpt``.
    embedding_model : torch.nn.Module
        Receives the whole state (strict).
    classifier : torch.nn.Module
        A classifier with a ``weight`` of (classes * sub-centres, E) rows.
    """
    checkpoint = Path(checkpoint)
    state = torch.load(checkpoint / "embedding_model.ckpt", map_location="cpu", weights_only=True)
    embedding_model.load_state_dict(state)
    weight = torch.load(checkpoint / "classifier.ckpt", map_location="cpu", weights_only=True)["weight"]
    rows = min(weight.shape[0], classifier.weight.shape[0])
    with torch.no_grad():
        classifier.weight[:rows] = weight[:rows].to(classifier.weight.device)
