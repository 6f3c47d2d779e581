"""Results of a verification run: metrics per list and scoring, as markdown, JSON, DET plots.

Authors
 * lap-speechbrain contributors 2026
"""

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from lap_speechbrain.fileio import atomic_open
from lap_speechbrain.scoring.metrics import (
    det_curve,
    eer_from_counts,
    error_counts,
    min_dcf_from_counts,
    reference_eer,
)

# results[trial list][scoring condition][metric name] = value
Results = Dict[str, Dict[str, Dict[str, float]]]


def dcf_key(p_target: float) -> str:
    """The metric name of the minDCF at ``p_target``.

    Example
    -------
    >>> dcf_key(0.01)
    'min_dcf_0.01'
    """
    return f"min_dcf_{p_target:g}"


def evaluate_scores(
    scores, labels, p_targets: Sequence[float] = (0.01, 0.05), eer_rule: str = "mean"
) -> Dict[str, float]:
    """EER and normalised minDCF at each ``p_target`` for one set of scores.

    Arguments
    ---------
    scores : array-like
        (T,) trial scores.
    labels : array-like
        (T,) 0/1 labels.
    p_targets : sequence of float
        Target priors of the minDCFs.
    eer_rule : str
        ``"mean"``: :func:`~lap_speechbrain.scoring.metrics.compute_eer`;
        ``"max"``: :func:`~lap_speechbrain.scoring.metrics.reference_eer`.

    Returns
    -------
    dict
        ``eer`` (fraction), ``eer_threshold`` and one ``min_dcf_<p>`` per prior.

    Example
    -------
    >>> evaluate_scores([0.1, 0.3, 0.2, 0.9], [0, 0, 1, 1], p_targets=[0.05])
    {'eer': 0.5, 'eer_threshold': 0.25, 'min_dcf_0.05': 0.5}
    """
    if eer_rule not in ("mean", "max"):
        raise ValueError(f"eer_rule must be 'mean' or 'max', got {eer_rule!r}")
    counts = error_counts(scores, labels)  # one sort for every metric
    eer, threshold = eer_from_counts(counts) if eer_rule == "mean" else reference_eer(scores, labels)
    metrics = {"eer": eer, "eer_threshold": threshold}
    for p_target in p_targets:
        metrics[dcf_key(p_target)] = min_dcf_from_counts(counts, p_target)[0]
    return metrics


def markdown_table(results: Results, p_targets: Sequence[float]) -> str:
    """A markdown table: one row per trial list and scoring condition.

    Arguments
    ---------
    results : dict
        ``results[list][condition]`` = :func:`evaluate_scores` output.
    p_targets : sequence of float
        The minDCF priors to show.

    Returns
    -------
    str
        The table, EER in %, minDCF with four decimals.

    Example
    -------
    >>> print(markdown_table({"O": {"cosine": {"eer": 0.0123, "min_dcf_0.01": 0.1}}}, [0.01]))
    | Trial list | Scoring | EER (%) | minDCF (p=0.01) |
    |---|---|---:|---:|
    | O | cosine | 1.230 | 0.1000 |
    """
    header = "| Trial list | Scoring | EER (%) | " + " | ".join(
        f"minDCF (p={p:g})" for p in p_targets
    ) + " |"
    lines = [header, "|---|---|---:|" + "---:|" * len(p_targets)]
    for name, conditions in results.items():
        for condition, metrics in conditions.items():
            cells = [name, condition, f"{100 * metrics['eer']:.3f}"]
            cells += [f"{metrics[dcf_key(p)]:.4f}" for p in p_targets]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class ResultsError(ValueError):
    """A results file that cannot be read; the message names it."""


def read_results(path: Union[str, Path]) -> Results:
    """Reads the ``results.json`` that :func:`write_results` writes.

    Arguments
    ---------
    path : str or Path
        The file: ``{trial list: {condition: {metric: value}}}`` with EER as a
        fraction and minDCFs under :func:`dcf_key` names.

    Returns
    -------
    dict
        The results.

    Raises
    ------
    ResultsError
        Naming the file when it is unreadable or not of that shape.
    """
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path}: cannot read the evaluation results ({error})") from error
    valid = isinstance(results, dict) and all(
        isinstance(conditions, dict) and all(isinstance(metrics, dict) for metrics in conditions.values())
        for conditions in results.values()
    )
    if not valid:
        raise ResultsError(
            f"{path}: expected {{trial list: {{condition: {{metric: value}}}}}}, got {results!r:.200}"
        )
    return results


def write_results(
    results: Results,
    output_folder: Union[str, Path],
    p_targets: Sequence[float],
    run_info: Optional[Mapping[str, object]] = None,
    heading: Optional[str] = None,
) -> Tuple[Path, Path]:
    """Writes ``results.md``, ``results.json`` and, if given, ``run_info.json`` (atomically).

    ``results.json`` holds exactly ``{trial list: {condition: {metric:
    value}}}`` (EER as a fraction), so other tools can read it without
    knowing about the run; facts about the run go to ``run_info.json``.

    Arguments
    ---------
    results : dict
        ``results[list][condition]`` = :func:`evaluate_scores` output.
    output_folder : str or Path
        Destination folder.
    p_targets : sequence of float
        The minDCF priors shown in the table.
    run_info : mapping, optional
        Facts about the run (model, trial lists, cohort, sizes).
    heading : str, optional
        A line written above the table in ``results.md`` (e.g. the protocol).

    Returns
    -------
    tuple of Path
        The markdown and JSON result files.
    """
    output_folder = Path(output_folder)
    markdown_path = output_folder / "results.md"
    json_path = output_folder / "results.json"
    with atomic_open(markdown_path) as handle:
        if heading:
            handle.write(heading + "\n\n")
        handle.write(markdown_table(results, p_targets) + "\n")
    with atomic_open(json_path) as handle:
        json.dump(results, handle, indent=2)
    if run_info is not None:
        with atomic_open(output_folder / "run_info.json") as handle:
            json.dump(dict(run_info), handle, indent=2)
    return markdown_path, json_path


def plot_det(
    curves: Mapping[str, Tuple[np.ndarray, np.ndarray]],
    eers: Mapping[str, float],
    path: Union[str, Path],
    title: str,
) -> Path:
    """Draws DET curves (miss vs false-alarm rate on normal-deviate axes) to a PNG.

    Arguments
    ---------
    curves : mapping
        ``condition -> (scores, labels)``, one curve each.
    eers : mapping
        ``condition -> EER`` (fraction) shown in the legend, as reported.
    path : str or Path
        The PNG file.
    title : str
        Plot title.

    Returns
    -------
    Path
        ``path``.
    """
    # A Figure with the Agg canvas: no pyplot, so no global backend or GUI state.
    figure = Figure(figsize=(5.5, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ticks = np.array([0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    clip = (ticks[0] / 2, 1 - ticks[0] / 2)
    for condition, (scores, labels) in curves.items():
        p_miss, p_fa, _ = det_curve(scores, labels)
        axes.plot(
            norm.ppf(np.clip(p_fa, *clip)),
            norm.ppf(np.clip(p_miss, *clip)),
            label=f"{condition} (EER {100 * eers[condition]:.2f} %)",
        )
    positions = norm.ppf(ticks)
    labels_text = [f"{100 * t:g}" for t in ticks]
    axes.set_xticks(positions, labels_text)
    axes.set_yticks(positions, labels_text)
    axes.set_xlim(positions[0], positions[-1])
    axes.set_ylim(positions[0], positions[-1])
    axes.set_xlabel("False-alarm rate (%)")
    axes.set_ylabel("Miss rate (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    return path
