"""The speaker encoder: an HF SSL model (WavLM, HuBERT, wav2vec 2.0) and a speaker backend.

Authors
 * lap-speechbrain contributors 2026
"""

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lap_speechbrain.lobes.backend import build_backend, network_min_frames

# The backend settings a model folder records: the arguments of build_backend
# except the two sizes, which come from the SSL model's config.
BACKEND_KEYS = ("aggregation", "network", "lap_channels", "num_heads", "embedding_dim", "lap_dropout",
                "layer_pooling", "frame_dropout")


def receptive_field(kernels: Sequence[int], strides: Sequence[int], frames: int = 1) -> int:
    """Samples that a stack of 1-d convolutions needs for ``frames`` output frames
    (one frame: 400 for WavLM's CNN; each further frame adds the total stride, 320).

    Example
    -------
    >>> receptive_field([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
    400
    >>> receptive_field([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], frames=7)
    2320
    """
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field + (frames - 1) * jump


def masked_group_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` with each row's statistics over its first ``frames[b]`` frames only.

    Row b then equals ``norm(x[b:b+1, :, :frames[b]])`` on its valid frames,
    whatever padding follows them.

    Arguments
    ---------
    norm : nn.GroupNorm
        Gives the groups, eps and affine parameters.
    x : torch.Tensor
        (B, C, T) input.
    frames : torch.Tensor
        (B,) valid frames of each row.

    Returns
    -------
    torch.Tensor
        (B, C, T) float32 (as GroupNorm under autocast); padded frames are
        normalised with their row's statistics too.

    Example
    -------
    >>> norm = nn.GroupNorm(4, 4)
    >>> x = torch.randn(2, 4, 10)
    >>> out = masked_group_norm(norm, x, torch.tensor([10, 6]))
    >>> torch.allclose(out[1:, :, :6], norm(x[1:, :, :6]), atol=1e-5)
    True
    """
    batch, channels, time = x.shape
    grouped = x.float().reshape(batch, norm.num_groups, channels // norm.num_groups, time)
    mask = (torch.arange(time, device=x.device) < frames.to(x.device)[:, None]).float()[:, None, None, :]
    count = mask.sum(dim=(2, 3), keepdim=True) * grouped.shape[2]
    mean = (grouped * mask).sum(dim=(2, 3), keepdim=True) / count
    variance = (((grouped - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
    normalized = ((grouped - mean) * torch.rsqrt(variance + norm.eps)).reshape(batch, channels, time)
    if norm.affine:
        normalized = normalized * norm.weight.float()[:, None] + norm.bias.float()[:, None]
    return normalized


@contextlib.contextmanager
def valid_frame_group_norm(model: nn.Module, samples: torch.Tensor) -> Iterator[None]:
    """While open, the GroupNorm of ``model``'s first CNN layer uses valid frames only.

    A forward hook replaces the norm's output by :func:`masked_group_norm`
    over the frames that each row's ``samples`` give through the first
    convolution, so a padded batch of a Base-type model (wav2vec 2.0 / HuBERT
    / WavLM ``feat_extract_norm="group"``) gives each utterance's states alone.

    Arguments
    ---------
    model : nn.Module
        An HF SSL model with ``feature_extractor.conv_layers[0].{conv, layer_norm}``.
    samples : torch.Tensor
        (B,) valid samples of each row of the batch.
    """
    first = model.feature_extractor.conv_layers[0]
    frames = (samples - first.conv.kernel_size[0]) // first.conv.stride[0] + 1

    def hook(module, args, output):
        return masked_group_norm(module, args[0], frames).to(output.dtype)

    handle = first.layer_norm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class SSLSpeakerEncoder(nn.Module):
    """Waveforms -> all SSL hidden states -> speaker backend -> speaker embedding.

    ``ssl_model`` is SpeechBrain's HF wrapper (``speechbrain.integrations.
    huggingface.WavLM``, ``HuBERT`` or ``Wav2Vec2``). The encoder reads L and D
    from the loaded model's config and builds the backend to match, so no yaml
    names the model's size. It also fixes what the wrapper and the installed
    transformers version get wrong for this use (docs/lap_spec.md section 1):

    - The hidden states are collected by the encoder, the same way under
      transformers 4.x and 5.x, as 4.x returns them (the reference ran on 4.x):
      hidden state 0 is the input of the first transformer layer, state i the
      output of layer i, and the last one is ``last_hidden_state``, so for
      Large-type models (``do_stable_layer_norm``) it is the output of the
      final encoder LayerNorm (5.x returns the state before it), and that
      LayerNorm trains with the rest of the model.
    - LayerDrop keeps L states on every call: a dropped layer passes its
      input through, as in 4.x (5.x leaves its state out).
    - LayerDrop and SpecAugment time masking are off until
      :meth:`set_ssl_regularization` turns them on (per stage); they act only
      while the SSL model trains, never when it is frozen or in eval mode.
    - A frozen SSL model is kept in eval mode and run under ``no_grad`` even
      after ``Brain`` calls ``modules.train()`` every epoch.
    - The waveform is fed as it is (the reference does not normalise it; the
      wrapper's ``do_normalize`` would normalise over the padded length).
    - Models whose first CNN layer uses GroupNorm (Base-type WavLM, wav2vec 2.0
      Base, HuBERT Base) normalise over the whole padded signal, so their output
      changes with padding. For such models a padded batch either runs batched
      with that GroupNorm's statistics over each utterance's valid frames only
      (:func:`valid_frame_group_norm`, ``group_norm_batching = "masked"``) or
      one utterance at a time at its own length (``"per_utterance"``, the
      default, see the attribute); both make the embedding independent of the
      batch it is in. Batches without padding (training crops) run batched.
    - A row shorter than the CNN's receptive field (:attr:`min_samples`, 400
      samples for WavLM; 2,320 with the x-vector network, which needs 7
      frames) has too few frames to embed: it raises ``RuntimeError``
      naming the row, for either model type (a Base-type CNN would fail on
      it, a Large-type one would embed padding). pyannote.audio's
      minimum-length search expects this ``RuntimeError``.
    - The SpecAugment mask embedding receives no gradient while SpecAugment is
      off, so it is then excluded from training (DDP stops on unused
      parameters otherwise).

    Arguments
    ---------
    ssl_model : torch.nn.Module
        A SpeechBrain HF SSL wrapper; its ``model`` attribute is the HF model.
    frozen : bool
        Start with the SSL model frozen (stage 1) or trainable (stage 2).
    aggregation : str
        Layer aggregation: ``"lap"`` or ``"superb"``.
    network : str
        Speaker network: ``"astp"``, ``"ecapa-tdnn"``, ``"x-vector"`` or ``"mhfa"``.
    lap_channels, num_heads, embedding_dim, lap_dropout, layer_pooling, frame_dropout
        Passed to :func:`~lap_speechbrain.lobes.backend.build_backend`
        (``embedding_dim`` None: the network's size in the reference).
    """

    def __init__(
        self,
        ssl_model: nn.Module,
        frozen: bool = True,
        aggregation: str = "lap",
        network: str = "astp",
        lap_channels: int = 512,
        num_heads: int = 16,
        embedding_dim: Optional[int] = None,
        lap_dropout: float = 0.1,
        layer_pooling: str = "max",
        frame_dropout: float = 0.1,
    ):
        super().__init__()
        self.ssl_model = ssl_model
        config = ssl_model.model.config
        # The wrapper then returns last_hidden_state; hidden_states() collects the others.
        ssl_model.output_all_hiddens = False
        ssl_model.normalize_wav = False
        ssl_model.output_norm = False
        self.num_layers = config.num_hidden_layers + 1
        self.input_size = config.hidden_size
        self.pads_by_group_norm = getattr(config, "feat_extract_norm", "") == "group"
        self.min_samples = receptive_field(config.conv_kernel, config.conv_stride, network_min_frames(network))
        # How a padded batch of a GroupNorm front end runs: "masked" (one batched
        # call, valid-frame statistics) or "per_utterance". Same embeddings. On CPU
        # "masked" was not reliably faster and took 8-10x the memory (README,
        # Benchmarks); benchmarks/gpu_suite.py measures both for a GPU decision.
        self.group_norm_batching = "per_utterance"
        self.backend = build_backend(
            aggregation,
            network,
            num_layers=self.num_layers,
            input_size=self.input_size,
            lap_channels=lap_channels,
            num_heads=num_heads,
            embedding_dim=embedding_dim,
            lap_dropout=lap_dropout,
            layer_pooling=layer_pooling,
            frame_dropout=frame_dropout,
        )
        self.embedding_dim = self.backend.embedding_dim
        self.backend_config: Dict[str, Any] = dict(
            aggregation=aggregation,
            network=network,
            lap_channels=lap_channels,
            num_heads=num_heads,
            embedding_dim=self.embedding_dim,
            lap_dropout=lap_dropout,
            layer_pooling=layer_pooling,
            frame_dropout=frame_dropout,
        )
        self.frozen = frozen
        self.set_ssl_regularization(layerdrop=0.0, mask_time_prob=0.0, mask_time_length=config.mask_time_length)

    def _unused_ssl_parameters(self):
        """Parameters of the HF model that the hidden states do not depend on now."""
        model = self.ssl_model.model
        if getattr(model, "masked_spec_embed", None) is not None and not model.config.apply_spec_augment:
            return [model.masked_spec_embed]
        return []

    def set_ssl_regularization(self, layerdrop: float, mask_time_prob: float, mask_time_length: int) -> None:
        """Sets the SSL model's LayerDrop and SpecAugment time masking (per stage).

        Both act only while the SSL model trains (train mode, not frozen). The
        reference fine-tunes WavLM with the Hugging Face defaults, LayerDrop
        0.1 and time masking with probability 0.05 of spans of 10 frames (at
        least ``config.mask_time_min_masks`` spans per utterance).

        Arguments
        ---------
        layerdrop : float
            Probability that a transformer layer (other than the first) is
            skipped; its hidden state is then its input.
        mask_time_prob : float
            SpecAugment: fraction of the frames covered by masked spans (before
            overlaps), as ``transformers`` defines it; 0 turns it off.
        mask_time_length : int
            Frames per masked span.
        """
        model = self.ssl_model.model
        config = model.config
        if mask_time_prob > 0 and getattr(model, "masked_spec_embed", None) is None:
            raise ValueError(
                f"mask_time_prob={mask_time_prob}: the SSL model has no mask embedding (its config has "
                "mask_time_prob=0 and mask_feature_prob=0), so it cannot apply SpecAugment; set it to 0"
            )
        config.layerdrop = layerdrop
        config.apply_spec_augment = mask_time_prob > 0
        if mask_time_prob > 0:
            # A zero here would also drop the mask embedding from models rebuilt
            # from the saved config (inference), so "off" is apply_spec_augment.
            config.mask_time_prob = mask_time_prob
            config.mask_time_length = mask_time_length
        self.set_ssl_frozen(self.frozen)

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

    def _run_ssl(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor]) -> torch.Tensor:
        """(L, B, T, D) states of one call of the HF model, as transformers 4.x returns them.

        Forward hooks record the input of the first layer and the output of
        each other layer but the last; a layer that LayerDrop skipped records
        nothing and its state repeats the previous one. The last state is the
        model's ``last_hidden_state``, which the wrapper returns.
        """
        layers = self.ssl_model.model.encoder.layers
        first_input: List[torch.Tensor] = []
        outputs: Dict[int, torch.Tensor] = {}

        def record_input(module, args, kwargs):
            first_input.append(args[0] if args else kwargs["hidden_states"])

        def record_output(index):
            def hook(module, args, output):
                # transformers 4.x layers return tuples, some 5.x layers the tensor.
                outputs[index] = output[0] if isinstance(output, tuple) else output

            return hook

        # Registered per call, so copies of the module (e.g. for model
        # averaging) never share a recorder.
        handles = [layers[0].register_forward_pre_hook(record_input, with_kwargs=True)]
        handles += [layer.register_forward_hook(record_output(i)) for i, layer in enumerate(layers[:-1])]
        try:
            last = self.ssl_model(wavs, wav_lens)
        finally:
            for handle in handles:
                handle.remove()
        states = first_input[:1]
        for index in range(len(layers) - 1):
            states.append(outputs.get(index, states[-1]))
        states.append(last)
        return torch.stack(states)

    def check_lengths(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor]) -> None:
        """Refuses rows shorter than :attr:`min_samples`, naming them.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms.
        wav_lens : torch.Tensor or None
            Relative lengths (B,).

        Raises
        ------
        RuntimeError
            Naming the rows, their lengths and the minimum.
        """
        if wav_lens is None:
            samples = torch.full((wavs.shape[0],), wavs.shape[1])
        else:
            samples = torch.round(wav_lens.detach().cpu() * wavs.shape[1]).long()
        short = (samples < self.min_samples).nonzero()[:, 0].tolist()
        if short:
            raise RuntimeError(
                f"rows {short} of the batch have {samples[short].tolist()} samples, fewer than the "
                f"{self.min_samples} samples the model needs (the SSL model's receptive field, and the frames "
                f"its speaker network needs): too few frames to embed; leave them out"
            )

    def hidden_states(
        self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """All hidden states of the SSL model, (L, B, T, D), the last being ``last_hidden_state``.

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
        self.check_lengths(wavs, wav_lens)
        padded = wav_lens is not None and bool((torch.round(wav_lens * wavs.shape[1]) < wavs.shape[1]).any())
        if not (padded and self.pads_by_group_norm):
            return self._run_ssl(wavs, wav_lens)
        samples = torch.round(wav_lens * wavs.shape[1]).long()
        if self.group_norm_batching == "masked":
            with valid_frame_group_norm(self.ssl_model.model, samples):
                return self._run_ssl(wavs, wav_lens)
        if self.group_norm_batching != "per_utterance":
            raise ValueError(
                f"group_norm_batching must be 'masked' or 'per_utterance', not {self.group_norm_batching!r}"
            )
        per_utterance = [self._run_ssl(wav[None, :count], None) for wav, count in zip(wavs, samples.tolist())]
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
        """LAP gates alpha of one unpadded batch, (B, heads, T, L), for analysis (LAP + ASTP only)."""
        if not hasattr(self.backend, "layer_gates"):
            raise ValueError(
                f"layer gates are read from the LAP + ASTP backend; this encoder has "
                f"{self.backend_config['aggregation']} + {self.backend_config['network']}"
            )
        return self.backend.layer_gates(self.hidden_states(wavs))
