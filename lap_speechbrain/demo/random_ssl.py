"""Randomly initialised WavLM models saved in Hugging Face format, built offline.

The tests, the offline demo and the benchmarks cannot download pre-trained
weights, so they build a WavLM from a config and save it (config, feature
extractor config, random weights) into a folder that SpeechBrain's HF wrapper
loads exactly as it loads ``microsoft/wavlm-large``.

Authors
 * lap-speechbrain contributors 2026
"""

from pathlib import Path
from typing import Union

import torch
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

# Shapes of the released models, for benchmarks that need realistic sizes.
WAVLM_PRESETS = {
    "base-plus": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, do_stable_layer_norm=False,
                      feat_extract_norm="group", conv_bias=False),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, do_stable_layer_norm=True,
                  feat_extract_norm="layer", conv_bias=True),
}


def save_random_wavlm(
    folder: Union[str, Path], seed: int = 0, preset: str = "", **config: object
) -> str:
    """Builds a randomly initialised WavLM and saves it in HF format.

    Does nothing if ``folder`` already holds a model with the same config, so it
    can be called from a yaml on every run.

    Arguments
    ---------
    folder : str or Path
        Where ``config.json``, ``preprocessor_config.json`` and
        ``model.safetensors`` go.
    seed : int
        Seed of the random weights.
    preset : str
        ``"base-plus"`` or ``"large"`` for the released models' shapes, or ``""``.
    **config
        ``transformers.WavLMConfig`` arguments, applied over the preset
        (e.g. ``hidden_size=32, num_hidden_layers=2`` for a tiny model).

    Returns
    -------
    str
        The folder, usable as ``source`` of SpeechBrain's WavLM wrapper.

    Example
    -------
    >>> import tempfile
    >>> folder = save_random_wavlm(str(getfixture("tmpdir")), hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    >>> WavLMConfig.from_pretrained(folder).num_hidden_layers
    2
    """
    if preset and preset not in WAVLM_PRESETS:
        raise ValueError(f"preset={preset!r}; expected one of {sorted(WAVLM_PRESETS)}")
    folder = Path(folder)
    wavlm_config = WavLMConfig(**{**WAVLM_PRESETS.get(preset, {}), **config})
    if (folder / "model.safetensors").exists():
        saved = WavLMConfig.from_pretrained(folder)
        if saved.to_diff_dict() == wavlm_config.to_diff_dict():
            return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    WavLMModel(wavlm_config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=False,
        return_attention_mask=True,
    ).save_pretrained(folder)
    return str(folder)
