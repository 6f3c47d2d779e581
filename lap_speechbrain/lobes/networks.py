"""The paper's comparison speaker networks: ECAPA-TDNN, x-vector and MHFA.

Each takes the frames of one layer aggregation (LAP or the SUPERB weighted
sum) and returns a speaker embedding, with the sizes of the LAP reference
implementation (its ``modules/wrapper_func.py``). ECAPA-TDNN and x-vector are
SpeechBrain's lobes with the few parts changed where the reference (which
takes them from WeSpeaker) has another shape; each class says which.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import Optional

import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.lobes.models.Xvector import Xvector
from speechbrain.nnet.CNN import Conv1d
from torch import nn

from lap_speechbrain.lobes.pooling import ReferenceAttentiveStatisticsPooling, frame_mask


def reference_init(module: nn.Module) -> None:
    """Xavier-uniform for every weight with more than one dimension, zero biases.

    This is how the reference initialises its whole backend.

    Arguments
    ---------
    module : torch.nn.Module
        Initialised in place.

    Example
    -------
    >>> layer = nn.Linear(4, 3)
    >>> reference_init(layer)
    >>> int(torch.count_nonzero(layer.bias))
    0
    """
    for name, parameter in module.named_parameters():
        if name.endswith("weight") and parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)
        elif name.endswith("bias"):
            nn.init.zeros_(parameter)


def mask_safe_lengths(lengths: Optional[torch.Tensor], frames: int) -> Optional[torch.Tensor]:
    """Relative lengths that SpeechBrain's ``length_to_mask(lengths * T)`` reads exactly.

    ``lengths * T`` can land a rounding error above the frame count, and the
    mask then keeps one padded frame; half a frame below the count it keeps
    exactly the count.

    Arguments
    ---------
    lengths : torch.Tensor or None
        Relative lengths (B,).
    frames : int
        T.

    Returns
    -------
    torch.Tensor or None
        (B,), or None for None.

    Example
    -------
    >>> mask_safe_lengths(torch.tensor([1.0, 0.5]), 4) * 4
    tensor([3.5000, 1.5000])
    """
    if lengths is None:
        return None
    counts = torch.round(lengths.float() * frames).clamp(min=1)
    return (counts - 0.5) / frames


class MaskedStatisticsPooling(nn.Module):
    """Mean and standard deviation over the valid frames, (B, T, C) -> (B, 1, 2C).

    The x-vector pooling of the reference (WeSpeaker's TSTP): unbiased
    standard deviation with 1e-7 added to the variance. Unlike SpeechBrain's
    ``StatisticsPooling`` it adds no random noise to the mean (SpeechBrain
    does, also in eval mode) and masks padded frames in one pass.

    Example
    -------
    >>> pooling = MaskedStatisticsPooling()
    >>> pooling(torch.randn(2, 10, 6), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 12])
    """

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pools over time.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, C).
        lengths : torch.Tensor or None
            Relative lengths (B,).

        Returns
        -------
        torch.Tensor
            (B, 1, 2C).
        """
        batch, frames, _ = x.shape
        weights = frame_mask(lengths, batch, frames, x.device).unsqueeze(2).to(x.dtype)
        count = weights.sum(dim=1, keepdim=True)
        mean = (x * weights).sum(dim=1, keepdim=True) / count
        variance = ((x - mean) ** 2 * weights).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        return torch.cat([mean, torch.sqrt(variance + 1e-7)], dim=2)


def pad_with_zeros(module: nn.Module) -> None:
    """Makes every SpeechBrain ``Conv1d`` in ``module`` pad with zeros.

    SpeechBrain's convolutions pad by reflection; the reference's (PyTorch's
    ``nn.Conv1d``) pad with zeros.

    Arguments
    ---------
    module : torch.nn.Module
        Changed in place.

    Example
    -------
    >>> conv = Conv1d(4, kernel_size=3, in_channels=2)
    >>> pad_with_zeros(conv)
    >>> conv.padding_mode
    'constant'
    """
    for layer in module.modules():
        if isinstance(layer, Conv1d):
            layer.padding_mode = "constant"


class ECAPATDNNNetwork(ECAPA_TDNN):
    """ECAPA-TDNN (C = 512, global-context attention) as the reference has it.

    SpeechBrain's ``ECAPA_TDNN`` with the parts changed where the reference
    (which takes them from WeSpeaker) differs, so that it computes the
    reference's function:

    - the convolutions pad with zeros (SpeechBrain's by reflection);
    - the multi-layer feature aggregation is a 1x1 convolution and ReLU
      without BatchNorm (SpeechBrain: a ``TDNNBlock`` with BatchNorm);
    - the pooling's attention is conv, tanh, conv, without the ReLU and
      BatchNorm of SpeechBrain's ``TDNNBlock`` before the tanh; its context
      deviation is unbiased with 1e-7 added to the variance, and the pooled
      variance is clamped at 1e-7 (:class:`ReferenceAttentiveStatisticsPooling`).

    Two differences remain. The Res2Net block passes its first channel group
    through where the reference passes its last: the same function up to an
    order of channels, which ``export.reference`` maps when it imports a
    reference checkpoint. The SE blocks and the pooling skip padded frames
    (the reference averages over the padded length), which changes nothing
    for an unpadded input. The convolutions still see the padding at the end
    of a shorter utterance in a padded batch, so its embedding there differs
    slightly from its embedding alone (as with SpeechBrain's ECAPA-TDNN). The
    embedding has no BatchNorm after the last layer (``emb_bn=False``).

    Arguments
    ---------
    input_size : int
        Channels of the frames (the aggregation's output).
    embedding_dim : int
        Size of the speaker embedding.
    channels : int
        Channels C of the TDNN and SE-Res2Net layers.
    attention_channels : int
        Bottleneck of the pooling's attention.

    Example
    -------
    >>> network = ECAPATDNNNetwork(input_size=16, embedding_dim=8, channels=32, attention_channels=4)
    >>> network(torch.randn(2, 20, 16), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 1, 8])
    """

    def __init__(self, input_size: int, embedding_dim: int = 192, channels: int = 512, attention_channels: int = 128):
        aggregated = 3 * 512
        super().__init__(
            input_size,
            lin_neurons=embedding_dim,
            channels=[channels] * 4 + [aggregated],
            attention_channels=attention_channels,
            global_context=True,
        )
        self.mfa = nn.Sequential(nn.Conv1d(3 * channels, aggregated, kernel_size=1), nn.ReLU())
        self.asp = ReferenceAttentiveStatisticsPooling(aggregated, attention_channels, frame_dropout=0.0,
                                                       variance_floor=1e-7, context_variance_offset=1e-7)
        self.asp.tdnn = nn.Conv1d(3 * aggregated, attention_channels, kernel_size=1)
        self.asp.tanh = nn.Tanh()
        pad_with_zeros(self)
        self.embedding_dim = embedding_dim
        reference_init(self)

    def forward(self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embeds frames.

        Arguments
        ---------
        frames : torch.Tensor
            (B, T, C).
        lengths : torch.Tensor or None
            Relative lengths (B,).

        Returns
        -------
        torch.Tensor
            (B, 1, embedding_dim).
        """
        return super().forward(frames, mask_safe_lengths(lengths, frames.shape[1]))


class XvectorNetwork(Xvector):
    """The x-vector TDNN (512 hidden, 512-d embedding) as the reference has it.

    SpeechBrain's ``Xvector`` with the parts changed where the reference
    differs, so that it computes the reference's function:

    - ReLU (SpeechBrain's default is LeakyReLU);
    - each convolution pads (kernel - 1) / 2 zeros on each side whatever its
      dilation, so the two dilated layers shorten the sequence by 2 and 4
      frames (SpeechBrain keeps the length by reflection); an input needs at
      least ``MIN_FRAMES`` (7) frames;
    - :class:`MaskedStatisticsPooling` instead of SpeechBrain's noisy pooling;
    - the reference's training-only second layer: while training the
      embedding is ``W2 relu(W1 stats)``, which the classifier sees; in eval
      mode it is ``W1 stats``.

    As in ECAPA-TDNN, the convolutions see the padding at the end of a shorter
    utterance in a padded batch.

    Arguments
    ---------
    input_size : int
        Channels of the frames.
    embedding_dim : int
        Size of the embedding.
    hidden_channels : int
        Channels of the first four TDNN layers.
    statistics_channels : int
        Channels of the last TDNN layer, pooled into mean and deviation.

    Example
    -------
    >>> network = XvectorNetwork(input_size=16, embedding_dim=8, hidden_channels=12, statistics_channels=20)
    >>> network(torch.randn(2, 20, 16), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 1, 8])
    >>> network.MIN_FRAMES
    7
    """

    KERNEL_SIZES = (5, 3, 3, 1, 1)
    DILATIONS = (1, 2, 3, 1, 1)
    # Padding (k - 1) / 2 whatever the dilation, each layer drops (d - 1)(k - 1) frames.
    LOST_FRAMES = sum((dilation - 1) * (kernel - 1) for kernel, dilation in zip(KERNEL_SIZES, DILATIONS))
    MIN_FRAMES = LOST_FRAMES + 1

    def __init__(self, input_size: int, embedding_dim: int = 512, hidden_channels: int = 512,
                 statistics_channels: int = 1500):
        super().__init__(
            activation=nn.ReLU,
            tdnn_channels=[hidden_channels] * 4 + [statistics_channels],
            tdnn_kernel_sizes=list(self.KERNEL_SIZES),
            tdnn_dilations=list(self.DILATIONS),
            lin_neurons=embedding_dim,
            in_channels=input_size,
        )
        for layer in self.blocks:
            if isinstance(layer, Conv1d):
                layer.padding = "valid"  # SpeechBrain pads nothing; PyTorch's layer pads the reference's zeros
                layer.conv.padding = ((layer.kernel_size - 1) // 2,)
        self.blocks[-2] = MaskedStatisticsPooling()
        self.training_projection = nn.Linear(embedding_dim, embedding_dim)
        self.embedding_dim = embedding_dim
        reference_init(self)

    def forward(self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embeds frames.

        Arguments
        ---------
        frames : torch.Tensor
            (B, T, C), T at least ``MIN_FRAMES``.
        lengths : torch.Tensor or None
            Relative lengths (B,).

        Returns
        -------
        torch.Tensor
            (B, 1, embedding_dim).
        """
        total = frames.shape[1]
        if total < self.MIN_FRAMES:  # RuntimeError, as SSLSpeakerEncoder's rule for too short rows
            raise RuntimeError(f"the x-vector network needs at least {self.MIN_FRAMES} frames, got {total}")
        if lengths is not None:  # each row's valid frames after the convolutions, relative to the shorter output
            valid = torch.round(lengths.float() * total) - self.LOST_FRAMES
            lengths = valid.clamp(min=1) / (total - self.LOST_FRAMES)
        embedding = super().forward(frames, lengths)
        if self.training:
            return self.training_projection(torch.relu(embedding))
        return embedding


class MHFABackend(nn.Module):
    """Multi-head factorised attentive pooling (MHFA) over the SSL hidden states.

    Keys and values come from two separate layer aggregations of the same
    hidden states; both are compressed, the keys give one attention over time
    per head, each head pools the values, and a linear layer maps the
    concatenated heads to the embedding (Peng et al., SLT 2022, with the
    aggregations of the LAP reference). Padded frames get no attention (the
    reference attends over the padded length).

    Arguments
    ---------
    key_aggregation, value_aggregation : torch.nn.Module
        (L, B, T, D) -> (B, T, C): LAP or the SUPERB weighted sum.
    input_size : int
        C, the aggregations' output channels.
    num_heads : int
        Attention heads.
    compression_dim : int
        Size of the compressed keys and values.
    embedding_dim : int
        Size of the speaker embedding.

    Example
    -------
    >>> from lap_speechbrain.lobes.layer_sum import WeightedLayerSum
    >>> mhfa = MHFABackend(WeightedLayerSum(4), WeightedLayerSum(4), 16, num_heads=2,
    ...                    compression_dim=4, embedding_dim=8)
    >>> mhfa(torch.randn(4, 2, 20, 16), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 1, 8])
    """

    def __init__(self, key_aggregation: nn.Module, value_aggregation: nn.Module, input_size: int,
                 num_heads: int = 64, compression_dim: int = 128, embedding_dim: int = 256):
        super().__init__()
        self.key_aggregation = key_aggregation
        self.value_aggregation = value_aggregation
        self.key_compression = nn.Linear(input_size, compression_dim)
        self.value_compression = nn.Linear(input_size, compression_dim)
        self.attention = nn.Linear(compression_dim, num_heads)
        self.projection = nn.Linear(num_heads * compression_dim, embedding_dim)
        self.embedding_dim = embedding_dim
        for layer in (self.key_compression, self.value_compression, self.attention, self.projection):
            reference_init(layer)

    def forward(self, hidden_states: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Computes speaker embeddings.

        Arguments
        ---------
        hidden_states : torch.Tensor
            (L, B, T, D).
        lengths : torch.Tensor or None
            Relative lengths of the frames (B,).

        Returns
        -------
        torch.Tensor
            (B, 1, embedding_dim).
        """
        keys = self.key_compression(self.key_aggregation(hidden_states))  # (B, T, c)
        values = self.value_compression(self.value_aggregation(hidden_states))
        batch, frames, _ = keys.shape
        logits = self.attention(keys)  # (B, T, heads)
        valid = frame_mask(lengths, batch, frames, keys.device).unsqueeze(2)
        logits = logits.masked_fill(~valid, float("-inf"))
        softmax_dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits: softmax in fp32
        attention = torch.softmax(logits.to(softmax_dtype), dim=1).to(values.dtype)
        pooled = torch.einsum("bth,btc->bhc", attention, values)
        return self.projection(pooled.reshape(batch, 1, -1))
