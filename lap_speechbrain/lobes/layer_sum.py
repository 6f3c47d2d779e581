"""SUPERB-style baseline: a softmax-weighted sum of the SSL hidden states.

Authors
 * lap-speechbrain contributors 2026
"""

import torch
from torch import nn


class WeightedLayerSum(nn.Module):
    """One learnable weight per layer, softmax-normalised, summed over layers.

    This is how SUPERB, WeSpeaker and UniSpeech feed an SSL model to ECAPA-TDNN;
    it is the baseline that LAP is compared with.

    Arguments
    ---------
    num_layers : int
        Number of hidden states L, including hidden state 0.

    Example
    -------
    >>> layer_sum = WeightedLayerSum(num_layers=4)
    >>> layer_sum(torch.randn(4, 2, 10, 8)).shape
    torch.Size([2, 10, 8])
    """

    def __init__(self, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.layer_weights = nn.Parameter(torch.zeros(num_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Weighted sum over layers.

        Arguments
        ---------
        hidden_states : torch.Tensor
            Stacked hidden states, (L, B, T, D).

        Returns
        -------
        torch.Tensor
            (B, T, D).
        """
        if hidden_states.shape[0] != self.num_layers:
            raise ValueError(
                f"hidden_states has L={hidden_states.shape[0]}; expected {self.num_layers}"
            )
        weights = torch.softmax(self.layer_weights, dim=0).to(hidden_states.dtype)
        return torch.einsum("l,lbtd->btd", weights, hidden_states)
