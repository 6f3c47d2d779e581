"""Attentive statistics pooling as the LAP reference computes it.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import Optional

import torch
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from torch import nn


def frame_mask(lengths: Optional[torch.Tensor], batch: int, frames: int, device) -> torch.Tensor:
    """Boolean mask of valid frames from SpeechBrain relative lengths.

    ``length_to_mask(lengths * T)`` keeps one frame too many when ``lengths * T``
    lands a rounding error above an integer, so the frame count is rounded here.

    Arguments
    ---------
    lengths : torch.Tensor or None
        Relative lengths in (0, 1], shape (B,). None means no padding.
    batch : int
        Batch size B.
    frames : int
        Number of frames T.
    device : torch.device
        Device of the mask.

    Returns
    -------
    torch.Tensor
        (B, T), True on valid frames.

    Example
    -------
    >>> frame_mask(torch.tensor([1.0, 0.5]), 2, 4, "cpu")
    tensor([[ True,  True,  True,  True],
            [ True,  True, False, False]])
    """
    if lengths is None:
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    counts = torch.round(lengths.to(device).float() * frames).clamp(min=1)
    return torch.arange(frames, device=device).unsqueeze(0) < counts.unsqueeze(1)


class ReferenceAttentiveStatisticsPooling(AttentiveStatisticsPooling):
    """SpeechBrain's ECAPA attentive statistics pooling, as the LAP reference has it.

    It reuses SpeechBrain's layers (``TDNNBlock``: conv, ReLU, BatchNorm, then a
    1x1 conv) but differs where the reference differs, so it overrides
    ``forward``: no tanh before the last conv, an unbiased global standard
    deviation for the context, random frame dropout in the attention during
    training, and a 1e-4 floor on the pooled variance. The reference's
    ECAPA-TDNN pools with the same statistics but other constants, which
    ``variance_floor`` and ``context_variance_offset`` take.

    Arguments
    ---------
    channels : int
        Input channels C.
    attention_channels : int
        Bottleneck of the attention (C/2 in the reference).
    frame_dropout : float
        Probability that a frame is excluded from the attention while training.
    variance_floor : float
        Lower clamp of the attention-weighted variance before the square root.
    context_variance_offset : float
        Added to the context's variance before its square root.

    Example
    -------
    >>> pooling = ReferenceAttentiveStatisticsPooling(16, attention_channels=8)
    >>> pooling(torch.randn(3, 16, 20), torch.tensor([1.0, 0.7, 0.4])).shape
    torch.Size([3, 32, 1])
    """

    def __init__(
        self,
        channels: int,
        attention_channels: int = 256,
        frame_dropout: float = 0.1,
        variance_floor: float = 1e-4,
        context_variance_offset: float = 0.0,
    ):
        super().__init__(channels, attention_channels, global_context=True)
        self.tanh = nn.Identity()  # the reference has no tanh in the attention
        self.frame_dropout = frame_dropout
        self.variance_floor = variance_floor
        self.context_variance_offset = context_variance_offset

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pools weighted mean and standard deviation over time.

        Arguments
        ---------
        x : torch.Tensor
            (B, C, T).
        lengths : torch.Tensor or None
            Relative lengths (B,); padded frames get no attention.

        Returns
        -------
        torch.Tensor
            (B, 2C, 1): attentive mean and standard deviation.
        """
        batch, _, frames = x.shape
        mask = frame_mask(lengths, batch, frames, x.device).unsqueeze(1)  # (B, 1, T)
        weights = mask.to(x.dtype)
        count = weights.sum(dim=2, keepdim=True)
        mean = (x * weights).sum(dim=2, keepdim=True) / count
        squares = ((x - mean) ** 2 * weights).sum(dim=2, keepdim=True)
        variance = squares / (count - 1).clamp(min=1) + self.context_variance_offset
        std = torch.sqrt(variance.clamp(min=self.eps))
        context = torch.cat(
            [x, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], dim=1
        )
        logits = self.conv(self.tanh(self.tdnn(context)))
        if self.training and self.frame_dropout > 0:
            dropped = torch.rand(batch, 1, frames, device=x.device) < self.frame_dropout
            logits = logits.masked_fill(dropped, torch.finfo(logits.dtype).min)
        logits = logits.masked_fill(~mask, float("-inf"))
        softmax_dtype = torch.promote_types(logits.dtype, torch.float32)
        attention = torch.softmax(logits.to(softmax_dtype), dim=2).to(x.dtype)
        pooled_mean = (attention * x).sum(dim=2)
        pooled_var = (attention * x * x).sum(dim=2) - pooled_mean**2
        pooled_std = torch.sqrt(pooled_var.clamp(min=self.variance_floor))
        return torch.cat([pooled_mean, pooled_std], dim=1).unsqueeze(2)
