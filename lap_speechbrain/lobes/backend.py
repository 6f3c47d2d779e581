"""Speaker backends: a layer aggregation of all SSL hidden states and a speaker network.

:func:`build_backend` builds the eight systems the paper compares (its
reference's ``modules/wrapper_func.py``): the aggregation ``lap``
(:class:`~lap_speechbrain.lobes.lap.LayerAttentivePooling`) or ``superb``
(:class:`~lap_speechbrain.lobes.layer_sum.WeightedLayerSum`), and the speaker
network ``astp`` (attentive statistics pooling and a 192-d embedding layer),
``ecapa-tdnn``, ``x-vector`` or ``mhfa``.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import Optional

import torch
from torch import nn

from lap_speechbrain.lobes.lap import LayerAttentivePooling
from lap_speechbrain.lobes.layer_sum import WeightedLayerSum
from lap_speechbrain.lobes.networks import ECAPATDNNNetwork, MHFABackend, XvectorNetwork
from lap_speechbrain.lobes.pooling import ReferenceAttentiveStatisticsPooling

AGGREGATIONS = ("lap", "superb")
NETWORKS = ("astp", "ecapa-tdnn", "x-vector", "mhfa")
# The reference's embedding size of each speaker network.
EMBEDDING_DIMS = {"astp": 192, "ecapa-tdnn": 192, "x-vector": 512, "mhfa": 256}


class ASTPBackend(nn.Module):
    """A layer aggregation -> attentive statistics pooling -> embedding layer.

    The aggregation fuses the layers frame by frame, attentive statistics
    pooling (attention bottleneck C/2) summarises time, and a linear layer
    between two BatchNorms gives the embedding (docs/lap_spec.md section 3).

    Arguments
    ---------
    aggregation : torch.nn.Module
        (L, B, T, D) -> (B, T, C).
    aggregation_name : str
        The attribute, and so the state-dict prefix, of the aggregation
        (``lap`` for LAP: the keys of every LAP + ASTP checkpoint).
    channels : int
        C, the aggregation's output channels.
    embedding_dim : int
        Size of the speaker embedding.
    frame_dropout : float
        Frame dropout in the attentive pooling while training.

    Example
    -------
    >>> backend = ASTPBackend(WeightedLayerSum(4), "layer_sum", channels=16, embedding_dim=8)
    >>> backend(torch.randn(4, 2, 25, 16), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 1, 8])
    """

    def __init__(self, aggregation: nn.Module, aggregation_name: str, channels: int,
                 embedding_dim: int = 192, frame_dropout: float = 0.1):
        super().__init__()
        self.aggregation_name = aggregation_name
        self.add_module(aggregation_name, aggregation)
        self.embedding_dim = embedding_dim
        self.pooling = ReferenceAttentiveStatisticsPooling(
            channels,
            attention_channels=channels // 2,
            frame_dropout=frame_dropout,
        )
        self.pooling_norm = nn.BatchNorm1d(2 * channels)
        self.embedding = nn.Linear(2 * channels, embedding_dim)
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
        frames = getattr(self, self.aggregation_name)(hidden_states)  # (B, T, C)
        stats = self.pooling(frames.transpose(1, 2), lengths).squeeze(2)
        embedding = self.embedding(self.pooling_norm(stats))
        return self.embedding_norm(embedding).unsqueeze(1)


class LAPSpeakerBackend(ASTPBackend):
    """LAP + ASTP: the paper's lightweight backend (see :class:`ASTPBackend`).

    With the defaults it has 1,714,480 parameters for WavLM Base+
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
        super().__init__(
            LayerAttentivePooling(
                num_layers,
                input_size,
                output_size=lap_channels,
                num_heads=num_heads,
                dropout=lap_dropout,
                layer_pooling=layer_pooling,
            ),
            "lap",
            lap_channels,
            embedding_dim=embedding_dim,
            frame_dropout=frame_dropout,
        )
        self.num_layers = num_layers
        self.input_size = input_size

    def layer_gates(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LAP gates alpha for analysis, (B, heads, T, L)."""
        return self.lap(hidden_states, return_gates=True)[1]


class SpeakerBackend(nn.Module):
    """A layer aggregation followed by a TDNN speaker network (ECAPA-TDNN, x-vector).

    Arguments
    ---------
    aggregation : torch.nn.Module
        (L, B, T, D) -> (B, T, C).
    network : torch.nn.Module
        (B, T, C) and relative lengths -> (B, 1, E); has ``embedding_dim``.

    Example
    -------
    >>> from lap_speechbrain.lobes.networks import XvectorNetwork
    >>> backend = SpeakerBackend(WeightedLayerSum(4), XvectorNetwork(16, 8, 12, 20))
    >>> backend(torch.randn(4, 2, 25, 16), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 1, 8])
    """

    def __init__(self, aggregation: nn.Module, network: nn.Module):
        super().__init__()
        self.aggregation = aggregation
        self.network = network
        self.embedding_dim = network.embedding_dim

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
        return self.network(self.aggregation(hidden_states), lengths)


def network_embedding_dim(network: str, embedding_dim: Optional[int] = None) -> int:
    """The embedding size of ``network``: ``embedding_dim``, or the reference's (``EMBEDDING_DIMS``) when None.

    Example
    -------
    >>> network_embedding_dim("x-vector"), network_embedding_dim("x-vector", 128)
    (512, 128)
    """
    if network not in NETWORKS:
        raise ValueError(f"network={network!r}; expected one of {NETWORKS}")
    return EMBEDDING_DIMS[network] if embedding_dim is None else embedding_dim


def network_min_frames(network: str) -> int:
    """The fewest frames ``network`` embeds: the x-vector's convolutions shorten the sequence.

    Example
    -------
    >>> network_min_frames("astp"), network_min_frames("x-vector")
    (1, 7)
    """
    if network not in NETWORKS:
        raise ValueError(f"network={network!r}; expected one of {NETWORKS}")
    return XvectorNetwork.MIN_FRAMES if network == "x-vector" else 1


def build_backend(
    aggregation: str,
    network: str,
    num_layers: int,
    input_size: int,
    lap_channels: int = 512,
    num_heads: int = 16,
    lap_dropout: float = 0.1,
    layer_pooling: str = "max",
    embedding_dim: Optional[int] = None,
    frame_dropout: float = 0.1,
) -> nn.Module:
    """Builds one of the paper's eight backends with the reference's sizes.

    The LAP settings apply wherever LAP appears (with ``mhfa``: both its key
    and its value aggregation); ``frame_dropout`` applies to ``astp`` only.
    Settings that the chosen combination has no use for are ignored, so one
    yaml serves every combination. The parameter counts of the defaults for
    WavLM Base+ (L 13, D 768) and Large (L 25, D 1024) are those of the
    reference (README, "The lobes").

    Arguments
    ---------
    aggregation : str
        ``"lap"`` or ``"superb"``.
    network : str
        ``"astp"``, ``"ecapa-tdnn"``, ``"x-vector"`` or ``"mhfa"``.
    num_layers : int
        Number of hidden states L, including hidden state 0.
    input_size : int
        SSL width D.
    lap_channels, num_heads, lap_dropout, layer_pooling
        LAP's output channels, heads, gate dropout and pooling over layers.
    embedding_dim : int or None
        Size of the speaker embedding; None: the network's own in the
        reference (``EMBEDDING_DIMS``: 192, 192, 512, 256).
    frame_dropout : float
        Frame dropout of the attentive statistics pooling (``astp``).

    Returns
    -------
    torch.nn.Module
        Takes (L, B, T, D) hidden states and relative lengths (B,), returns
        (B, 1, E) embeddings; its ``embedding_dim`` is E.

    Example
    -------
    >>> backend = build_backend("superb", "ecapa-tdnn", num_layers=13, input_size=768)
    >>> sum(p.numel() for p in backend.parameters())
    7952013
    >>> backend = build_backend("lap", "mhfa", 4, 32, lap_channels=16, num_heads=4)
    >>> backend(torch.randn(4, 2, 25, 32), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 1, 256])
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}; expected one of {AGGREGATIONS}")
    embedding_dim = network_embedding_dim(network, embedding_dim)
    if aggregation == "lap" and network == "astp":
        return LAPSpeakerBackend(num_layers, input_size, lap_channels, num_heads, embedding_dim,
                                 lap_dropout, layer_pooling, frame_dropout)

    def aggregate() -> nn.Module:
        if aggregation == "superb":
            return WeightedLayerSum(num_layers)
        return LayerAttentivePooling(num_layers, input_size, output_size=lap_channels, num_heads=num_heads,
                                     dropout=lap_dropout, layer_pooling=layer_pooling)

    channels = input_size if aggregation == "superb" else lap_channels
    if network == "astp":
        return ASTPBackend(aggregate(), "layer_sum", channels, embedding_dim, frame_dropout)
    if network == "mhfa":
        return MHFABackend(aggregate(), aggregate(), channels, embedding_dim=embedding_dim)
    layers = aggregate()
    if network == "ecapa-tdnn":
        return SpeakerBackend(layers, ECAPATDNNNetwork(channels, embedding_dim))
    return SpeakerBackend(layers, XvectorNetwork(channels, embedding_dim))
