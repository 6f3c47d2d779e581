"""Packages a trained model as a folder that SpeechBrain loads from disk or the Hub.

The exported folder holds ``hyperparams.yaml`` (``lap_speechbrain/export/inference.yaml``
with its first section filled in), ``embedding_model.ckpt`` (SSL model and
LAP backend), ``classifier.ckpt``, ``label_encoder.ckpt`` and a ``README.md``
model card with Hugging Face metadata. Two inputs are supported:

- a training output folder of ``recipes/train_speaker_embeddings.py`` (its
  ``save/model/`` artifact), and
- a ``model.state`` of the authors' reference implementation with the SSL
  model's config (a hub id or folder), through :mod:`lap_speechbrain.export.reference`.

The folder is written to a temporary sibling, loaded once with
``EncoderClassifier.from_hparams`` as a check, and renamed into place.

Authors
 * lap-speechbrain contributors 2026
"""

import inspect
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import yaml
from speechbrain.dataio.encoder import CategoricalEncoder
from transformers import AutoConfig

from lap_speechbrain.export.card import model_card
from lap_speechbrain.inference.audio import SSL_RECEPTIVE_FIELD
from lap_speechbrain.lobes import SSLSpeakerEncoder
from lap_speechbrain.scoring.report import read_results
from lap_speechbrain.lobes.ssl_encoder import BACKEND_KEYS

ARTIFACT_SUBFOLDER = Path("save") / "model"
ARTIFACT_FILES = (
    "embedding_model.ckpt",
    "classifier.ckpt",
    "label_encoder.txt",
    "ssl_config.json",
    "backend_config.json",
)
THRESHOLD_KEYS = ("valid_threshold", "eer_threshold")
# SpeakerRecognition.verify_batch's default, used when nothing was calibrated.
UNCALIBRATED_THRESHOLD = 0.25

PathLike = Union[str, Path]


class ExportError(ValueError):
    """The export input is incomplete or inconsistent, or the output folder is taken."""


def inference_template() -> str:
    """The text of the exported ``hyperparams.yaml`` template (package data)."""
    return resources.files("lap_speechbrain.export").joinpath("inference.yaml").read_text(encoding="utf-8")


def fill_template(template: str, values: Mapping[str, Any]) -> str:
    """Replaces the values of top-level keys of a yaml template.

    Each key must appear exactly once at the start of a line as ``key: value``
    (one line); the line becomes ``key: <value as yaml>``, keeping the rest of
    the template (comments, ``!ref`` and ``!new:`` tags) as written.

    Arguments
    ---------
    template : str
        The yaml text.
    values : mapping
        Top-level key -> plain value (numbers, strings, lists, dicts, None).

    Returns
    -------
    str
        The filled yaml text.

    Example
    -------
    >>> print(fill_template("a: 1  # the a\\nb: !ref <a>\\n", {"a": [2, 3]}), end="")
    a: [2, 3]
    b: !ref <a>
    """
    lines = template.splitlines(keepends=True)
    for key, value in values.items():
        found = [i for i, line in enumerate(lines) if line.startswith(f"{key}:")]
        if len(found) != 1:
            raise ExportError(f"template has {len(found)} top-level '{key}:' lines; expected 1")
        if isinstance(value, dict) and value:
            block = yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=1000)
            dumped = "\n" + "".join(f"    {line}\n" for line in block.splitlines())
        else:
            flow = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
            dumped = " " + flow.removesuffix("...").strip() + "\n"
        lines[found[0]] = f"{key}:{dumped}"
    return "".join(lines)


def receptive_field(ssl_config: Mapping[str, Any]) -> int:
    """Samples seen by one output frame of the SSL model's CNN (400 for WavLM).

    Example
    -------
    >>> receptive_field({"conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2]})
    400
    """
    kernels = ssl_config.get("conv_kernel")
    strides = ssl_config.get("conv_stride")
    if not kernels or not strides:
        return SSL_RECEPTIVE_FIELD
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def find_last(summary: Any, keys: Sequence[str]) -> Optional[float]:
    """The last number stored under one of ``keys`` in a nested training summary.

    The training recipe writes one record per stage in order, so the last one
    found belongs to the latest stage (the exported model's).

    Example
    -------
    >>> find_last({"stages": [{"valid_threshold": 0.4}, {"valid_threshold": 0.5}]}, THRESHOLD_KEYS)
    0.5
    """
    if isinstance(summary, Mapping):
        items = summary.items()
    elif isinstance(summary, list):
        items = enumerate(summary)
    else:
        return None
    found = None
    for key, value in items:
        nested = find_last(value, keys)
        if key in keys and isinstance(value, (int, float)) and not isinstance(value, bool):
            found = value
        elif nested is not None:
            found = nested
    return found


def export_model(
    out_dir: PathLike,
    ssl_config: Mapping[str, Any],
    backend_config: Mapping[str, Any],
    embedding_state: Mapping[str, torch.Tensor],
    classifier_state: Mapping[str, torch.Tensor],
    labels: Sequence[str],
    threshold: Optional[float] = None,
    embedding_mean: Optional[Sequence[float]] = None,
    results: Optional[Mapping[str, Any]] = None,
    training_summary: Optional[Mapping[str, Any]] = None,
    origin: str = "",
    repo_id: Optional[str] = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = ("voxceleb",),
    overwrite: bool = False,
) -> Path:
    """Writes an exported model folder from in-memory parts.

    Arguments
    ---------
    out_dir : str or Path
        The folder to create; must be missing or empty unless ``overwrite``.
    ssl_config : mapping
        HF config dict of the SSL model, with ``model_type``.
    backend_config : mapping
        ``SSLSpeakerEncoder`` backend keyword arguments (see ``BACKEND_KEYS``).
    embedding_state : mapping
        State dict of ``SSLSpeakerEncoder`` (``ssl_model.model.*``, ``backend.*``).
    classifier_state : mapping
        State dict of ``SubCenterClassifier``.
    labels : sequence of str
        Class names in class-index order.
    threshold : float or None
        Calibrated cosine threshold; None stores SpeechBrain's default 0.25
        and says so in the model card.
    embedding_mean : sequence of float or None
        Training-set mean embedding for ``encode_batch(normalize=True)``.
    results : mapping or None
        Evaluation results (see :func:`read_results`) for the card.
    training_summary : mapping or None
        The training recipe's per-stage summary, shown in the card.
    origin : str
        One line on where the weights come from, for the card.
    repo_id : str or None
        Hub id used in the card's usage snippet (default: the folder's path).
    license : str
        Hub license identifier.
    datasets : sequence of str
        Hub dataset identifiers for the card.
    overwrite : bool
        Replace a non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} is not empty; choose another folder or pass overwrite")
    unknown = sorted(set(backend_config) - set(BACKEND_KEYS))
    if unknown:
        raise ExportError(f"unknown backend settings {unknown}; expected some of {BACKEND_KEYS}")
    # Settings not given (e.g. a reference checkpoint's dropouts) keep the encoder's defaults.
    defaults = inspect.signature(SSLSpeakerEncoder).parameters
    backend_config = {key: backend_config.get(key, defaults[key].default) for key in BACKEND_KEYS}
    rows = classifier_state["weight"].shape[0]
    if not labels or rows % len(labels):
        raise ExportError(
            f"the classifier has {rows} rows, not a multiple of the {len(labels)} labels"
        )
    # Paths and versions of the machine that trained it mean nothing to a user.
    ssl_config = {
        key: value for key, value in ssl_config.items()
        if key not in ("transformers_version", "_name_or_path")
    }
    values = {
        "ssl_config": json.loads(json.dumps(ssl_config)),  # tuples -> lists: plain yaml
        **backend_config,
        "num_classes": len(labels),
        "num_subcenters": rows // len(labels),
        "verification_threshold": float(UNCALIBRATED_THRESHOLD if threshold is None else threshold),
        "min_audio_samples": receptive_field(ssl_config),
        "embedding_mean": None if embedding_mean is None else [float(x) for x in embedding_mean],
    }
    if len(set(labels)) != len(labels):
        raise ExportError(f"the class labels are not unique: {sorted(labels)[:10]}...")
    hyperparams = fill_template(inference_template(), values)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would survive the rename
    try:
        (staging / "hyperparams.yaml").write_text(hyperparams, encoding="utf-8")
        torch.save({k: v.detach().cpu().clone() for k, v in embedding_state.items()},
                   staging / "embedding_model.ckpt")
        torch.save({k: v.detach().cpu().clone() for k, v in classifier_state.items()},
                   staging / "classifier.ckpt")
        encoder = CategoricalEncoder()
        encoder.update_from_iterable(labels)
        encoder.save(staging / "label_encoder.ckpt")
        _check_loads(staging)
        source = repo_id or str(out_dir)
        card = model_card(
            values, source, results, training_summary, origin, threshold is not None, license, datasets
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
        _replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _check_loads(folder: Path) -> None:
    """Loads the folder as users will, so a broken export never lands."""
    from speechbrain.inference.speaker import EncoderClassifier

    try:
        EncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    except Exception as error:
        raise ExportError(f"the exported model does not load: {error}") from error


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Moves ``staging`` to ``out_dir``, replacing what is there."""
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        out_dir.rename(old / out_dir.name)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)


def find_artifact(output_folder: PathLike) -> Path:
    """The trained-model folder of a training output folder (``save/model``).

    Accepts the training output folder itself or its ``save/model`` folder.
    """
    output_folder = Path(output_folder)
    for candidate in (output_folder / ARTIFACT_SUBFOLDER, output_folder):
        if all((candidate / name).is_file() for name in ARTIFACT_FILES):
            return candidate
    missing = [name for name in ARTIFACT_FILES if not (output_folder / ARTIFACT_SUBFOLDER / name).is_file()]
    raise ExportError(
        f"{output_folder} is not a training output folder: {ARTIFACT_SUBFOLDER}/ lacks {missing}"
    )


def export_training_output(
    output_folder: PathLike,
    out_dir: PathLike,
    results: Optional[PathLike] = None,
    threshold: Optional[float] = None,
    embedding_mean: Optional[PathLike] = None,
    **card: Any,
) -> Path:
    """Exports the model trained by ``recipes/train_speaker_embeddings.py``.

    Arguments
    ---------
    output_folder : str or Path
        The recipe's ``output_folder`` (or its ``save/model``).
    out_dir : str or Path
        The folder to create.
    results : str or Path or None
        Evaluation JSON; by default ``<output_folder>/results.json`` if present.
    threshold : float or None
        Overrides the validation threshold of ``training_summary.json``.
    embedding_mean : str or Path or None
        A ``torch.save``-d (E,) tensor: the training-set mean embedding.
    **card
        ``repo_id``, ``license``, ``datasets``, ``overwrite`` of :func:`export_model`.

    Returns
    -------
    Path
        ``out_dir``.
    """
    artifact = find_artifact(output_folder)
    summary = _read_json(artifact / "training_summary.json") if (artifact / "training_summary.json").is_file() else None
    if threshold is None:
        threshold = find_last(summary, THRESHOLD_KEYS)
    if results is None and (Path(output_folder) / "results.json").is_file():
        results = Path(output_folder) / "results.json"
    encoder = CategoricalEncoder()
    try:
        encoder.load(artifact / "label_encoder.txt")
    except (ValueError, SyntaxError) as error:
        raise ExportError(f"{artifact / 'label_encoder.txt'}: unreadable label encoder ({error})") from error
    speakers = [encoder.ind2lab[index] for index in range(len(encoder))]
    # A stage trained with speed perturbation has a class per speaker and speed:
    # class = speaker + num_speakers * speed_index (lap_speechbrain.data.pipelines).
    classes = int(find_last(summary, ("classes",)) or len(speakers))
    if not speakers or classes % len(speakers):
        raise ExportError(
            f"{artifact}: the classifier has {classes} classes, not a multiple of the "
            f"{len(speakers)} speakers of label_encoder.txt"
        )
    labels = speakers + [
        f"{speaker}@speed{index}" for index in range(1, classes // len(speakers)) for speaker in speakers
    ]
    classifier_state = _load_state(artifact / "classifier.ckpt")
    subcenters = find_last(summary, ("num_subcenters",))
    if subcenters is not None and classifier_state["weight"].shape[0] != classes * subcenters:
        raise ExportError(
            f"{artifact / 'classifier.ckpt'}: {classifier_state['weight'].shape[0]} rows, expected "
            f"{classes} classes x {subcenters} sub-centres"
        )
    return export_model(
        out_dir,
        ssl_config=_read_json(artifact / "ssl_config.json"),
        backend_config=_read_json(artifact / "backend_config.json"),
        embedding_state=_load_state(artifact / "embedding_model.ckpt"),
        classifier_state=classifier_state,
        labels=labels,
        threshold=threshold,
        embedding_mean=_load_mean(embedding_mean),
        results=read_results(results) if results is not None else None,
        training_summary=summary,
        origin=f"trained with lap-speechbrain's recipe (output folder `{Path(output_folder).name}`)",
        **card,
    )


def export_reference(
    checkpoint: PathLike,
    ssl_source: str,
    out_dir: PathLike,
    results: Optional[PathLike] = None,
    threshold: Optional[float] = None,
    embedding_mean: Optional[PathLike] = None,
    labels: Optional[Sequence[str]] = None,
    **card: Any,
) -> Path:
    """Exports a ``model.state`` of the authors' reference LAP implementation.

    Arguments
    ---------
    checkpoint : str or Path
        The reference checkpoint.
    ssl_source : str
        Hub id or folder of the SSL model it was trained from; only its config
        is read (``AutoConfig``; offline from the HF cache when cached).
    out_dir : str or Path
        The folder to create.
    results, threshold, embedding_mean
        As in :func:`export_training_output`.
    labels : sequence of str or None
        Class names in class order; the reference does not store them, so the
        default names classes by index ("0", "1", ...).
    **card
        ``repo_id``, ``license``, ``datasets``, ``overwrite`` of :func:`export_model`.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from lap_speechbrain.export.reference import from_reference

    converted = from_reference(checkpoint)
    config = converted["config"]
    try:
        ssl_config = AutoConfig.from_pretrained(ssl_source).to_dict()
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot read the SSL model config from {ssl_source!r}: {error}") from error
    if (ssl_config.get("num_hidden_layers", -2) + 1, ssl_config.get("hidden_size")) != (
        config["num_layers"], config["input_size"]
    ):
        raise ExportError(
            f"{checkpoint} was trained on an SSL model with L={config['num_layers']} hidden states "
            f"of width {config['input_size']}, but {ssl_source} has "
            f"L={ssl_config.get('num_hidden_layers', -2) + 1}, width {ssl_config.get('hidden_size')}"
        )
    embedding_state = {f"ssl_model.model.{k}": v for k, v in converted["frontend"].items()}
    embedding_state.update({f"backend.{k}": v for k, v in converted["backend"].items()})
    labels = list(labels) if labels is not None else [str(i) for i in range(config["num_classes"])]
    return export_model(
        out_dir,
        ssl_config=ssl_config,
        backend_config={key: config[key] for key in ("lap_channels", "num_heads", "embedding_dim")},
        embedding_state=embedding_state,
        classifier_state=converted["classifier"],
        labels=labels,
        threshold=threshold,
        embedding_mean=_load_mean(embedding_mean),
        results=read_results(results) if results is not None else None,
        origin=f"converted from a checkpoint of the authors' reference implementation on `{ssl_source}`",
        **card,
    )


def _read_json(path: Path) -> Any:
    """Reads a JSON file with an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ExportError(f"{path}: cannot read JSON ({error})") from error


def _load_state(path: Path) -> Dict[str, torch.Tensor]:
    """Weights-only read of a state dict."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError(f"{path}: cannot read the checkpoint ({error})") from error


def _load_mean(path: Optional[PathLike]) -> Optional[List[float]]:
    """Reads a saved (E,) mean embedding tensor."""
    if path is None:
        return None
    mean = _load_state(Path(path))
    if not isinstance(mean, torch.Tensor):
        raise ExportError(f"{path}: expected a saved tensor of the mean embedding")
    return mean.flatten().tolist()
