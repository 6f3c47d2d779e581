"""An SSL model (WavLM, HuBERT, wav2vec 2.0) built from a config dict, with no download.

An exported model carries its fine-tuned SSL weights in ``embedding_model.ckpt``,
so loading it must not fetch the original pre-trained weights. SpeechBrain's
HF wrappers always do: they call ``from_pretrained`` on their ``source`` (or ask
the Hub for its file list), and treat any folder holding a ``.ckpt`` as a
SpeechBrain checkpoint (docs/lap_spec.md section 1, trap 5). This wrapper replaces
only that loading step: it builds the HF model from a config dict embedded in
the exported ``hyperparams.yaml`` and reuses the wrapper's forward.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import Any, Dict

from speechbrain.integrations.huggingface.wav2vec2 import Wav2Vec2
from torch import nn
from transformers import AutoConfig, AutoModel


class SSLFromConfig(Wav2Vec2):
    """SpeechBrain's SSL wrapper on a randomly initialised HF model built from a config.

    The forward (attention mask from relative lengths, optional stacking of all
    hidden states) is SpeechBrain's ``Wav2Vec2.forward``; only the loading is
    replaced. The weights are expected to be loaded afterwards (by the
    pretrainer, from the embedding model's checkpoint).

    Arguments
    ---------
    config : dict
        The HF model config as a dict (``PretrainedConfig.to_dict()``), with
        its ``model_type`` (``"wavlm"``, ``"hubert"``, ``"wav2vec2"``).
    freeze : bool
        Run under ``no_grad`` and keep the model in eval mode.
    output_all_hiddens : bool
        Return all hidden states stacked, (L, B, T, D).
    normalize_wav : bool
        Layer-normalise the waveform before the model.
    output_norm : bool
        Layer-normalise the output.

    Example
    -------
    >>> import torch
    >>> config = dict(model_type="wavlm", hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    >>> ssl = SSLFromConfig(config, freeze=True, output_all_hiddens=True)
    >>> ssl(torch.randn(2, 4000), torch.tensor([1.0, 0.5])).shape
    torch.Size([3, 2, 12, 32])
    """

    def __init__(
        self,
        config: Dict[str, Any],
        freeze: bool = True,
        output_all_hiddens: bool = True,
        normalize_wav: bool = False,
        output_norm: bool = False,
    ):
        # Skips HFTransformersInterface.__init__, which downloads or reads the
        # pre-trained weights from a source; everything else it sets is set here.
        nn.Module.__init__(self)
        config = dict(config)
        model_type = config.pop("model_type")
        config.pop("transformers_version", None)
        self.config = AutoConfig.for_model(model_type, **config)
        self.config.apply_spec_augment = False
        self.model = AutoModel.from_config(self.config)
        self.for_pretraining = False
        self.freeze_feature_extractor = False
        self.normalize_wav = normalize_wav
        self.output_norm = output_norm
        self.output_all_hiddens = output_all_hiddens
        self.freeze = freeze
        if freeze:
            self.freeze_model(self.model)
