"""The lightweight speaker backend: LAP -> attentive statistics pooling -> embedding.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import Optional

import torch
from torch import nn

from lap_speechbrain.lobes.lap import LayerAttentivePooling
from lap_speechbrain.lobes.pooling import ReferenceAttentiveStatisticsPooling


class LAPSpeakerBackend(nn.Module):
    """Speaker embedding from all hidden states of an SSL model.

    LAP fuses the layers frame by frame, attentive statistics pooling summarises
    time, and a linear layer with BatchNorm gives the embedding (docs/lap_spec.md
    section 3). With the defaults it has 1,714,480 parameters for WavLM Base+
    (L 13, D 768) and 2,312,464 for WavLM Large (L 25, D 1024).

    Arguments
    ---------
    num_layers : int
        Number of hidden states L, including hidden state 0.
    input_size : int
        SSL width D.
    lap_channels : int
        LAP output channels H (also the pooling's channels C).
    num_heads : int
        LAP heads.
    embedding_dim : int
        Size of the speaker embedding.
    lap_dropout : float
        Dropout on LAP's gates while training.
    layer_pooling : str
        LAP's pooling over layers: ``"max"``, ``"mean"`` or ``"sum"``.
    frame_dropout : float
        Frame dropout in the attentive pooling while training.

    Example
    -------
    >>> backend = LAPSpeakerBackend(num_layers=13, input_size=768)
    >>> sum(p.numel() for p in backend.parameters())
    1714480
    >>> backend = LAPSpeakerBackend(num_layers=4, input_size=32, lap_channels=16, num_heads=4, embedding_dim=8)
    >>> backend(torch.randn(4, 2, 25, 32), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 1, 8])
    """

    def __init__(
        self,
        num_layers: int,
        input_size: int,
        lap_channels: int = 512,
        num_heads: int = 16,
        embedding_dim: int = 192,
        lap_dropout: float = 0.1,
        layer_pooling: str = "max",
        frame_dropout: float = 0.1,
    ):
        super().__init__()
        self.num_layers = num_layers
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        self.lap = LayerAttentivePooling(
            num_layers,
            input_size,
            output_size=lap_channels,
            num_heads=num_heads,
            dropout=lap_dropout,
            layer_pooling=layer_pooling,
        )
        self.pooling = ReferenceAttentiveStatisticsPooling(
            lap_channels,
            attention_channels=lap_channels // 2,
            frame_dropout=frame_dropout,
        )
        self.pooling_norm = nn.BatchNorm1d(2 * lap_channels)
        self.embedding = nn.Linear(2 * lap_channels, embedding_dim)
        self.embedding_norm = nn.BatchNorm1d(embedding_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Xavier-uniform for every weight matrix and zero biases (the reference)."""
        for module in self.pooling.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.embedding.weight)
        nn.init.zeros_(self.embedding.bias)

    def forward(
        self, hidden_states: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Computes speaker embeddings.

        Arguments
        ---------
        hidden_states : torch.Tensor
            Stacked SSL hidden states, (L, B, T, D).
        lengths : torch.Tensor or None
            SpeechBrain relative lengths of the frames, (B,).

        Returns
        -------
        torch.Tensor
            Embeddings, (B, 1, embedding_dim).
        """
        frames = self.lap(hidden_states)  # (B, T, H)
        stats = self.pooling(frames.transpose(1, 2), lengths).squeeze(2)
        embedding = self.embedding(self.pooling_norm(stats))
        return self.embedding_norm(embedding).unsqueeze(1)

    def layer_gates(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LAP gates alpha for analysis, (B, heads, T, L)."""
        return self.lap(hidden_states, return_gates=True)[1]
