"""The speaker encoder: an HF SSL model (WavLM, HuBERT, wav2vec 2.0) and the LAP backend.

Authors
 * lap-speechbrain contributors 2026
"""

import inspect
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lap_speechbrain.lobes.backend import LAPSpeakerBackend

# The backend settings a model folder records: every LAPSpeakerBackend argument
# except the two sizes, which come from the SSL model's config.
BACKEND_KEYS = tuple(
    name for name in inspect.signature(LAPSpeakerBackend).parameters if name not in ("num_layers", "input_size")
)


class SSLSpeakerEncoder(nn.Module):
    """Waveforms -> all SSL hidden states -> LAP backend -> speaker embedding.

    ``ssl_model`` is SpeechBrain's HF wrapper (``speechbrain.integrations.
    huggingface.WavLM``, ``HuBERT`` or ``Wav2Vec2``). The encoder reads L and D
    from the loaded model's config and builds the backend to match, so no yaml
    names the model's size. It also fixes what the wrapper gets wrong for this
    use (docs/lap_spec.md section 1):

    - LayerDrop is switched off: in train mode it drops hidden states from the
      output, and LAP needs all L of them on every call.
    - A frozen SSL model is kept in eval mode and run under ``no_grad`` even
      after ``Brain`` calls ``modules.train()`` every epoch.
    - The waveform is fed as it is (the reference does not normalise it; the
      wrapper's ``do_normalize`` would normalise over the padded length).
    - Models whose first CNN layer uses GroupNorm (Base-type WavLM, wav2vec 2.0
      Base, HuBERT Base) normalise over the whole padded signal, so their output
      changes with padding. For such models a padded batch is run one utterance
      at a time at its own length, which makes the embedding independent of
      the batch it is in. Batches without padding (training crops) run batched.
    - Parameters that never receive a gradient (the spec-augment mask embedding,
      and the final encoder LayerNorm of Large-type models, whose output is not
      among the hidden states) are excluded from training so DDP does not stop
      on unused parameters.

    Arguments
    ---------
    ssl_model : torch.nn.Module
        A SpeechBrain HF SSL wrapper; its ``model`` attribute is the HF model.
    frozen : bool
        Start with the SSL model frozen (stage 1) or trainable (stage 2).
    lap_channels, num_heads, embedding_dim, lap_dropout, layer_pooling, frame_dropout
        Passed to :class:`LAPSpeakerBackend`.
    """

    def __init__(
        self,
        ssl_model: nn.Module,
        frozen: bool = True,
        lap_channels: int = 512,
        num_heads: int = 16,
        embedding_dim: int = 192,
        lap_dropout: float = 0.1,
        layer_pooling: str = "max",
        frame_dropout: float = 0.1,
    ):
        super().__init__()
        self.ssl_model = ssl_model
        config = ssl_model.model.config
        config.layerdrop = 0.0
        ssl_model.output_all_hiddens = True
        ssl_model.normalize_wav = False
        ssl_model.output_norm = False
        self.num_layers = config.num_hidden_layers + 1
        self.input_size = config.hidden_size
        self.pads_by_group_norm = getattr(config, "feat_extract_norm", "") == "group"
        self.backend = LAPSpeakerBackend(
            num_layers=self.num_layers,
            input_size=self.input_size,
            lap_channels=lap_channels,
            num_heads=num_heads,
            embedding_dim=embedding_dim,
            lap_dropout=lap_dropout,
            layer_pooling=layer_pooling,
            frame_dropout=frame_dropout,
        )
        self.backend_config: Dict[str, Any] = dict(
            lap_channels=lap_channels,
            num_heads=num_heads,
            embedding_dim=embedding_dim,
            lap_dropout=lap_dropout,
            layer_pooling=layer_pooling,
            frame_dropout=frame_dropout,
        )
        self.frozen = frozen
        self.set_ssl_frozen(frozen)

    def _unused_ssl_parameters(self):
        """Parameters of the HF model that the hidden states never depend on."""
        model = self.ssl_model.model
        unused = []
        if getattr(model, "masked_spec_embed", None) is not None:
            unused.append(model.masked_spec_embed)
        if getattr(model.config, "do_stable_layer_norm", False):
            unused.extend(model.encoder.layer_norm.parameters())
        return unused

    def set_ssl_frozen(self, frozen: bool) -> None:
        """Freezes (stage 1) or unfreezes (stage 2) the SSL model at run time.

        Arguments
        ---------
        frozen : bool
            True: eval mode, no gradients, forward under ``no_grad``.
        """
        self.frozen = frozen
        self.ssl_model.freeze = frozen
        for parameter in self.ssl_model.parameters():
            parameter.requires_grad = not frozen
        for parameter in self._unused_ssl_parameters():
            parameter.requires_grad = False
        self.ssl_model.train(self.training and not frozen)

    def train(self, mode: bool = True) -> "SSLSpeakerEncoder":
        """Sets train/eval mode but keeps a frozen SSL model in eval mode."""
        super().train(mode)
        if self.frozen:
            self.ssl_model.eval()
        return self

    def frame_lengths(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor], frames: int):
        """Relative lengths of the SSL frames from relative waveform lengths.

        The frame count of each utterance comes from the CNN's arithmetic, as
        the HF attention mask does, so pooling masks exactly the frames that
        the utterance alone would have.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms.
        wav_lens : torch.Tensor or None
            Relative lengths (B,).
        frames : int
            T, the number of frames of the padded batch.

        Returns
        -------
        torch.Tensor or None
            Relative frame lengths (B,).
        """
        if wav_lens is None:
            return None
        samples = torch.round(wav_lens * wavs.shape[1]).long()
        counts = self.ssl_model.model._get_feat_extract_output_lengths(samples)
        return counts.float().clamp(min=1) / frames

    def hidden_states(
        self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """All hidden states of the SSL model, (L, B, T, D).

        Padded frames are not zeroed; the backend masks them by length.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms at 16 kHz.
        wav_lens : torch.Tensor or None
            Relative lengths (B,).

        Returns
        -------
        torch.Tensor
            (L, B, T, D).
        """
        padded = wav_lens is not None and bool((torch.round(wav_lens * wavs.shape[1]) < wavs.shape[1]).any())
        if not (padded and self.pads_by_group_norm):
            return self.ssl_model(wavs, wav_lens)
        samples = torch.round(wav_lens * wavs.shape[1]).long().tolist()
        per_utterance = [self.ssl_model(wav[None, :count]) for wav, count in zip(wavs, samples)]
        frames = max(states.shape[2] for states in per_utterance)
        return torch.cat(
            [F.pad(states, (0, 0, 0, frames - states.shape[2])) for states in per_utterance],
            dim=1,
        )

    def forward(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Speaker embeddings from waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms at 16 kHz in [-1, 1].
        wav_lens : torch.Tensor or None
            SpeechBrain relative lengths (B,).

        Returns
        -------
        torch.Tensor
            (B, 1, embedding_dim).
        """
        states = self.hidden_states(wavs, wav_lens)
        return self.backend(states, self.frame_lengths(wavs, wav_lens, states.shape[2]))

    def layer_gates(self, wavs: torch.Tensor) -> torch.Tensor:
        """LAP gates alpha of one unpadded batch, (B, heads, T, L), for analysis."""
        return self.backend.layer_gates(self.hidden_states(wavs))
