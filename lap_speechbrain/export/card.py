"""The model card (``README.md``) of an exported model: Hub metadata, description, results, usage.

The metadata block is ``huggingface_hub``'s ``ModelCardData`` with one
``EvalResult`` per trial list, scoring condition and metric, so the Hub shows
the results in its evaluation widget.

Authors
 * lap-speechbrain contributors 2026
"""

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lap_speechbrain.export.standalone import HPARAMS_FILE, MODULE_FILE, foreign_class_call

PAPER = "https://arxiv.org/abs/2512.22148"
# How the card names each layer aggregation (title, sentence) and speaker network.
AGGREGATION_TEXT = {
    "lap": ("Layer Attentive Pooling", "Layer Attentive Pooling (LAP)"),
    "superb": ("a weighted layer sum", "a softmax-weighted layer sum (SUPERB)"),
}
NETWORK_TEXT = {
    "astp": "summarised over time by attentive statistics pooling",
    "ecapa-tdnn": "processed by an ECAPA-TDNN",
    "x-vector": "processed by an x-vector TDNN",
    "mhfa": "pooled by multi-head factorised attentive pooling (MHFA)",
}
SSL_NAMES = {"wavlm": "WavLM", "hubert": "HuBERT", "wav2vec2": "wav2vec 2.0"}
TAGS = ["speechbrain", "speaker-verification", "speaker-recognition", "embeddings", "wavlm",
        "layer-attentive-pooling", "pytorch", "audio"]


def model_card(
    values: Mapping[str, Any],
    source: str,
    results: Optional[Mapping[str, Any]],
    training_summary: Optional[Mapping[str, Any]],
    origin: str,
    threshold_note: str,
    license: str,
    datasets: Sequence[str],
    code_url: Optional[str] = None,
) -> str:
    """The exported folder's ``README.md``: Hub metadata, description, results, usage.

    Arguments
    ---------
    values : mapping
        The filled values of the exported ``hyperparams.yaml`` (``ssl_config``,
        ``embedding_dim``, ``verification_threshold``, ...).
    source : str
        Hub id or folder the usage code loads.
    results : mapping or None
        ``{trial list: {condition: {metric: value}}}`` as
        :func:`lap_speechbrain.scoring.report.read_results` returns it.
    training_summary : mapping or None
        The training recipe's per-stage summary.
    origin : str
        Where the weights come from (one sentence fragment).
    threshold_note : str
        How ``verification_threshold`` was chosen.
    license : str
        Hub license identifier.
    datasets : sequence of str
        Hub dataset identifiers (may be empty).
    code_url : str or None
        Git URL of lap-speechbrain's source, for the card's ``pip install
        git+<url>``; without it the card says to install from a checkout or wheel.

    Returns
    -------
    str
        The card: YAML front matter and markdown.
    """
    ssl = values["ssl_config"]
    ssl_name = SSL_NAMES.get(ssl.get("model_type"), ssl.get("model_type", "SSL"))
    name = source.rstrip("/").split("/")[-1]
    data = ModelCardData(
        language=["en"],
        license=license,
        library_name="speechbrain",
        tags=TAGS,
        datasets=list(datasets) or None,
        pipeline_tag="audio-classification",
        model_name=name if results else None,
        eval_results=eval_results(results, datasets[0] if datasets else "custom") if results else None,
    )
    aggregation, network = values.get("aggregation", "lap"), values.get("network", "astp")
    layers = AGGREGATION_TEXT[aggregation]
    lines = [
        f"# {name}: speaker embeddings with {layers[0]} over {ssl_name}",
        "",
        "Speaker verification and identification model: all hidden states of a "
        f"{ssl_name} model (L={ssl.get('num_hidden_layers', 0) + 1}, "
        f"D={ssl.get('hidden_size')}) are fused frame by frame by {layers[1]}, "
        f"{NETWORK_TEXT[network]} and projected to a "
        f"{values['embedding_dim']}-dimensional speaker embedding ([paper]({PAPER})). "
        f"Weights {origin}.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| SSL front end | {ssl_name}, {ssl.get('num_hidden_layers')} layers, width {ssl.get('hidden_size')}, "
        f"{'Large-type (stable layer norm)' if ssl.get('do_stable_layer_norm') else 'Base-type (group norm)'} |",
        f"| backend | layer aggregation `{aggregation}`, speaker network `{network}` |",
    ]
    if aggregation == "lap":
        lines.append(f"| LAP | {values['num_heads']} heads, {values['lap_channels']} channels, "
                     f"{values['layer_pooling']} over layers |")
    lines += [
        f"| embedding | {values['embedding_dim']} dims |",
        f"| classifier | {values['num_classes']} classes x {values['num_subcenters']} sub-centres |",
        f"| verification threshold | {values['verification_threshold']:.4f} ({threshold_note}); "
        "same speaker when cosine >= threshold |",
        f"| training-set mean embedding | {'stored (applied by encode_batch(normalize=True))' if values['embedding_mean'] else 'not stored'} |",
        "",
    ]
    if training_summary:
        lines += ["## Training", "", "Summary written by the training recipe, per stage:", "", "```json",
                  json.dumps(training_summary, indent=2, default=str)[:6000], "```", ""]
    if results:
        priors = sorted({p for conditions in results.values() for metrics in conditions.values()
                         for p in _metrics(metrics)[1]})
        lines += ["## Results", "", "EER in %, minimum DCF (C_miss = C_fa = 1, normalised).", "",
                  "| trials | scoring | EER (%) | " + " | ".join(f"minDCF {p:g}" for p in priors) + " |",
                  "|---|---|---|" + "---|" * len(priors)]
        for trials, conditions in results.items():
            for condition, metrics in conditions.items():
                eer, dcfs = _metrics(metrics)
                cells = [_format(eer, 100)] + [_format(dcfs.get(p)) for p in priors]
                lines.append(f"| {trials} | {condition} | " + " | ".join(cells) + " |")
        lines.append("")
    install = (f"`pip install git+{code_url}`" if code_url else
               "it is not on PyPI: install it from its source repository or a wheel built from it, "
               "`pip install <lap-speechbrain checkout or wheel>`")
    lines += [
        "## Usage",
        "",
        "Audio files may have any sample rate and channel count.",
        "",
        "**Without lap-speechbrain** (`pip install speechbrain transformers`): SpeechBrain's `foreign_class` "
        f"builds the model with the code in `{MODULE_FILE}` (lap-speechbrain's own modules, generated at "
        f"export) and `{HPARAMS_FILE}`:",
        "",
        "```python",
        standalone_snippet(source),
        "```",
        "",
        "**With lap-speechbrain**, which also provides the `lap-speechbrain` command and the pyannote.audio "
        f"integration ({install}):",
        "",
        "```python",
        usage_snippet(source),
        "```",
        "",
        "Both give the same embeddings and decisions. `LAPSpeakerRecognition` decides with the threshold stored "
        "in `hyperparams.yaml` (same speaker when "
        "the cosine is >= the threshold). Plain `speechbrain.inference.speaker.SpeakerRecognition` also "
        "loads this model when lap-speechbrain is installed, but its `verify_files` decides with its fixed "
        "default threshold 0.25 (and `score > threshold`). `classify_batch` returns cosine similarities to the "
        "training speakers in `out_prob`, not log posteriors (SpeechBrain's docstring says log posteriors); "
        "its `index` and `text_lab` are those of the most similar speaker.",
        "",
        "## Security",
        "",
        "Loading a model executes its `hyperparams.yaml` (it constructs Python objects) and, with "
        f"`foreign_class`, its `{MODULE_FILE}`: load only repositories you trust. The checkpoints are read with `torch.load(weights_only=True)`.",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def usage_snippet(source: str) -> str:
    """Python code that loads the model from ``source`` and uses it."""
    return f'''from speechbrain.inference.speaker import EncoderClassifier
from lap_speechbrain.inference import LAPSpeakerRecognition

source = "{source}"
verification = LAPSpeakerRecognition.from_hparams(source=source, savedir="pretrained_models/lap")
score, same_speaker = verification.verify_files("speaker1.wav", "speaker2.wav")
print(f"cosine {{score.item():.3f}}, same speaker: {{bool(same_speaker)}}")

encoder = EncoderClassifier.from_hparams(source=source, savedir="pretrained_models/lap")
waveform = verification.load_audio("speaker1.wav")  # mono, 16 kHz
embedding = encoder.encode_batch(waveform.unsqueeze(0))  # (1, 1, embedding_dim)
print(embedding.shape)'''


def standalone_snippet(source: str) -> str:
    """Python code that loads the model from ``source`` without lap-speechbrain and uses it."""
    return f'''from speechbrain.inference.interfaces import foreign_class

verification = {foreign_class_call(source)}
score, same_speaker = verification.verify_files("speaker1.wav", "speaker2.wav")
print(f"cosine {{score.item():.3f}}, same speaker: {{bool(same_speaker)}}")
embedding = verification.encode_file("speaker1.wav")  # (1, 1, embedding_dim)
print(embedding.shape)'''


def eval_results(results: Mapping[str, Any], dataset_type: str) -> List[EvalResult]:
    """The Hub's evaluation entries: per trial list, scoring condition and metric.

    Example
    -------
    >>> [(r.dataset_name, r.metric_type, r.metric_value) for r in eval_results(
    ...     {"O": {"cosine": {"eer": 0.0123, "eer_threshold": 0.4, "min_dcf_0.01": 0.1}}}, "voxceleb")]
    [('O', 'eer', 1.23), ('O', 'min_dcf', 0.1)]
    """
    entries = []
    for trials, conditions in results.items():
        for condition, values in conditions.items():
            eer, dcfs = _metrics(values)
            metrics = [] if eer is None else [("eer", round(eer * 100, 4), f"EER (%), {condition}")]
            metrics += [("min_dcf", round(dcf, 4), f"minDCF (p={prior:g}), {condition}")
                        for prior, dcf in sorted(dcfs.items())]
            entries += [
                EvalResult(task_type="speaker-verification", task_name="Speaker Verification",
                           dataset_type=dataset_type, dataset_name=trials, metric_type=kind,
                           metric_value=value, metric_name=label)
                for kind, value, label in metrics
            ]
    return entries


def _metrics(metrics: Mapping[str, Any]) -> Tuple[Optional[float], Dict[float, float]]:
    """EER and minDCF per prior of a results entry (``eer``, ``min_dcf_<p>`` keys of the scoring report).

    Example
    -------
    >>> _metrics({"eer": 0.01, "eer_threshold": 0.3, "min_dcf_0.01": 0.1, "min_dcf_0.05": 0.05})
    (0.01, {0.01: 0.1, 0.05: 0.05})
    """
    eer, dcfs = metrics.get("eer"), {}
    for key, value in metrics.items():
        prior = re.fullmatch(r"min_dcf_([0-9.eE-]+)", key)
        if prior:
            dcfs[float(prior.group(1))] = float(value)
    return None if eer is None else float(eer), dcfs


def _format(value: Optional[float], scale: float = 1) -> str:
    """A metric cell."""
    return "-" if value is None else f"{float(value) * scale:.3f}"
