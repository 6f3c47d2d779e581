"""The model card (``README.md``) of an exported model: Hub metadata, description, results, usage.

Authors
 * lap-speechbrain contributors 2026
"""

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

PAPER = "https://arxiv.org/abs/2512.22148"
SSL_NAMES = {"wavlm": "WavLM", "hubert": "HuBERT", "wav2vec2": "wav2vec 2.0"}


def model_card(
    values: Mapping[str, Any],
    source: str,
    results: Optional[Mapping[str, Any]],
    training_summary: Optional[Mapping[str, Any]],
    origin: str,
    calibrated: bool,
    license: str,
    datasets: Sequence[str],
) -> str:
    """The exported folder's ``README.md``: Hub metadata, description, results, usage."""
    ssl = values["ssl_config"]
    ssl_name = SSL_NAMES.get(ssl.get("model_type"), ssl.get("model_type", "SSL"))
    name = source.rstrip("/").split("/")[-1]
    front = {
        "library_name": "speechbrain",
        "license": license,
        "language": ["en"],
        "tags": ["speechbrain", "speaker-verification", "speaker-recognition", "embeddings",
                 "wavlm", "layer-attentive-pooling", "pytorch", "audio"],
        "datasets": list(datasets),
        "pipeline_tag": "audio-classification",
    }
    if results:
        dataset_type = datasets[0] if datasets else "custom"
        front["model-index"] = [{"name": name, "results": _index_results(results, dataset_type)}]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [
        f"# {name}: speaker embeddings with Layer Attentive Pooling over {ssl_name}",
        "",
        "Speaker verification and identification model: all hidden states of a "
        f"{ssl_name} model (L={ssl.get('num_hidden_layers', 0) + 1}, "
        f"D={ssl.get('hidden_size')}) are fused frame by frame by Layer Attentive Pooling (LAP), "
        "summarised over time by attentive statistics pooling and projected to a "
        f"{values['embedding_dim']}-dimensional speaker embedding ([paper]({PAPER})). "
        f"Weights {origin}.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| SSL front end | {ssl_name}, {ssl.get('num_hidden_layers')} layers, width {ssl.get('hidden_size')}, "
        f"{'Large-type (stable layer norm)' if ssl.get('do_stable_layer_norm') else 'Base-type (group norm)'} |",
        f"| LAP | {values['num_heads']} heads, {values['lap_channels']} channels, {values['layer_pooling']} over layers |",
        f"| embedding | {values['embedding_dim']} dims |",
        f"| classifier | {values['num_classes']} classes x {values['num_subcenters']} sub-centres |",
        f"| verification threshold | {values['verification_threshold']:.4f} "
        f"({'calibrated: EER threshold on the validation trials' if calibrated else 'not calibrated: SpeechBrain default'}) |",
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
    lines += [
        "## Usage",
        "",
        "Needs `pip install lap-speechbrain` (the yaml builds its modules). Audio files may have any "
        "sample rate and channel count.",
        "",
        "```python",
        usage_snippet(source),
        "```",
        "",
        "`LAPSpeakerRecognition` decides with the calibrated threshold stored in `hyperparams.yaml`. "
        "Plain `speechbrain.inference.speaker.SpeakerRecognition` also loads this model, but its "
        "`verify_files` decides with its fixed default threshold 0.25; with it, call "
        "`verify_batch(a, b, threshold=model.hparams.verification_threshold)`.",
        "",
        "## Security",
        "",
        "Loading a model executes its `hyperparams.yaml` (it constructs Python objects): load only "
        "repositories you trust. The checkpoints are read with `torch.load(weights_only=True)`.",
        "",
    ]
    return "\n".join(lines)


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


def _metrics(metrics: Mapping[str, Any]) -> Tuple[Optional[float], Dict[float, float]]:
    """EER and minDCF per prior from a results entry.

    Reads the keys of ``lap_speechbrain.scoring`` (``eer``, ``min_dcf_0.01``)
    and the spelling ``EER`` / ``minDCF@0.01``; other keys (thresholds) are
    not metrics of the card.

    Example
    -------
    >>> _metrics({"eer": 0.01, "eer_threshold": 0.3, "min_dcf_0.01": 0.1, "minDCF@0.05": 0.05})
    (0.01, {0.01: 0.1, 0.05: 0.05})
    """
    eer, dcfs = None, {}
    for key, value in metrics.items():
        prior = re.fullmatch(r"(?:min_dcf_|minDCF@)([0-9.eE-]+)", key)
        if key.lower() == "eer":
            eer = float(value)
        elif prior:
            dcfs[float(prior.group(1))] = float(value)
    return eer, dcfs


def _index_results(results: Mapping[str, Any], dataset_type: str) -> List[dict]:
    """model-index entries: one per trial list, its metrics per scoring condition."""
    entries = []
    for trials, conditions in results.items():
        metrics = []
        for condition, values in conditions.items():
            eer, dcfs = _metrics(values)
            if eer is not None:
                metrics.append({"type": "eer", "value": round(eer * 100, 4), "name": f"EER (%), {condition}"})
            for prior, dcf in sorted(dcfs.items()):
                metrics.append({"type": "min_dcf", "value": round(dcf, 4),
                                "name": f"minDCF (p={prior:g}), {condition}"})
        entries.append({
            "task": {"type": "speaker-verification", "name": "Speaker Verification"},
            "dataset": {"name": trials, "type": dataset_type},
            "metrics": metrics,
        })
    return entries


def _format(value: Optional[float], scale: float = 1) -> str:
    """A metric cell."""
    return "-" if value is None else f"{float(value) * scale:.3f}"
