"""Layer Attentive Pooling (LAP): fuses every hidden state of an SSL model.

LAP normalises and projects each layer, computes per-frame, per-head
Squeeze-Excitation gates over the layer axis and max-pools the gated layers
(arXiv 2512.22148). The formulation is in ``docs/lap_spec.md`` section 2.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

LAYER_POOLINGS = ("max", "mean", "sum")


class LayerAttentivePooling(nn.Module):
    """Layer Attentive Pooling over the stacked hidden states of an SSL model.

    Arguments
    ---------
    num_layers : int
        Number of hidden states L, *including* hidden state 0 (13 for WavLM
        Base+, 25 for WavLM Large).
    input_size : int
        Width D of the SSL model (768 / 1024). Must be divisible by ``num_heads``.
    output_size : int
        Channels H of the output projection.
    num_heads : int
        Number of heads h; each head owns D/h contiguous channels and gets its
        own gate per frame and layer. With one head there is no input projection.
    dropout : float
        Dropout applied to the gates during training.
    layer_pooling : str
        How gated layers are pooled: ``"max"`` (the paper), ``"mean"`` or
        ``"sum"`` (ablations).

    Example
    -------
    >>> hidden_states = torch.randn(5, 2, 30, 64)  # (L, B, T, D)
    >>> lap = LayerAttentivePooling(num_layers=5, input_size=64, output_size=32, num_heads=4)
    >>> lap(hidden_states).shape
    torch.Size([2, 30, 32])
    >>> output, gates = lap(hidden_states, return_gates=True)
    >>> gates.shape  # (B, heads, T, L)
    torch.Size([2, 4, 30, 5])
    """

    def __init__(
        self,
        num_layers: int,
        input_size: int,
        output_size: int = 512,
        num_heads: int = 16,
        dropout: float = 0.1,
        layer_pooling: str = "max",
    ):
        super().__init__()
        if input_size % num_heads != 0:
            raise ValueError(
                f"input_size={input_size} must be divisible by num_heads={num_heads}"
            )
        if layer_pooling not in LAYER_POOLINGS:
            raise ValueError(
                f"layer_pooling={layer_pooling!r}; expected one of {LAYER_POOLINGS}"
            )
        if num_layers < 2:
            raise ValueError(f"num_layers={num_layers}; LAP needs at least 2 layers")
        self.num_layers = num_layers
        self.input_size = input_size
        self.output_size = output_size
        self.num_heads = num_heads
        self.layer_pooling = layer_pooling
        squeeze_size = num_layers // 2

        # Parameters and buffers of the input BatchNorm; the normalisation itself
        # is folded into the projection in forward() (see _project).
        self.input_norm = nn.BatchNorm1d(input_size)
        self.input_projection = (
            nn.Linear(input_size, input_size) if num_heads > 1 else None
        )
        # One two-layer MLP per head over the layer axis, stored as batched
        # tensors so that all heads run in one bmm.
        self.squeeze_weight = nn.Parameter(torch.empty(num_heads, num_layers, squeeze_size))
        self.squeeze_bias = nn.Parameter(torch.zeros(num_heads, 1, squeeze_size))
        self.excite_weight = nn.Parameter(torch.empty(num_heads, squeeze_size, num_layers))
        self.excite_bias = nn.Parameter(torch.zeros(num_heads, 1, num_layers))
        self.gate_dropout = nn.Dropout(dropout)
        self.output_projection = nn.Linear(input_size, output_size)
        self.output_norm = nn.BatchNorm1d(output_size)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, as in the reference."""
        for parameter in (self.squeeze_weight, self.excite_weight):
            nn.init.xavier_uniform_(parameter)
        for linear in (self.input_projection, self.output_projection):
            if linear is not None:
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)

    def forward(
        self, hidden_states: torch.Tensor, return_gates: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Fuses the layers frame by frame.

        Arguments
        ---------
        hidden_states : torch.Tensor
            Stacked hidden states, shape (L, B, T, D), as returned by
            SpeechBrain's HF wrappers with ``output_all_hiddens=True``.
        return_gates : bool
            Also return the gates alpha.

        Returns
        -------
        output : torch.Tensor
            Shape (B, T, output_size).
        gates : torch.Tensor
            Only with ``return_gates``: alpha, shape (B, heads, T, L), in (0, 1).
        """
        num_layers, batch, frames, width = hidden_states.shape
        if num_layers != self.num_layers or width != self.input_size:
            raise ValueError(
                f"hidden_states has L={num_layers}, D={width}; this LAP was built "
                f"for L={self.num_layers}, D={self.input_size}"
            )
        projected = self._project(hidden_states)
        heads = projected.view(num_layers, batch, frames, self.num_heads, -1)
        gates = self._gates(heads)  # (h, B*T, L)
        gates_by_layer = gates.permute(2, 1, 0).reshape(
            num_layers, batch, frames, self.num_heads, 1
        )
        gated = heads * gates_by_layer.to(heads.dtype)
        if self.layer_pooling == "max":
            # max().values, not amax(): its backward scatters into the argmax
            # instead of comparing the whole (L, B, T, h, d) tensor with the
            # result (amax backward took ~40 % of a CPU training step).
            pooled = gated.max(dim=0).values
        elif self.layer_pooling == "mean":
            pooled = gated.mean(dim=0)
        else:
            pooled = gated.sum(dim=0)
        output = self.output_projection(pooled.reshape(batch, frames, width))
        output = self.output_norm(output.reshape(batch * frames, -1))
        output = output.view(batch, frames, self.output_size)
        if return_gates:
            alpha = gates.view(self.num_heads, batch, frames, num_layers)
            return output, alpha.permute(1, 0, 2, 3)
        return output

    def _project(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """BatchNorm over D (statistics over layers, batch and time), then W_in.

        The BatchNorm is an affine map per channel, so it is folded into the
        D x D projection: U = x (W diag(gamma / sigma))^T + W (beta - gamma mu /
        sigma) + b. This computes exactly BN-then-projection, but autograd then
        needs no gradient with respect to the (L, B, T, D) input when the SSL
        model is frozen: the backward pass costs one large matmul (the weight
        gradient) instead of two, which matters because this projection runs on
        every layer and dominates LAP's cost.
        """
        norm = self.input_norm
        flat = hidden_states.reshape(-1, self.input_size)
        if norm.training:
            # Statistics in at least fp32 (bf16 sums over L*B*T rows are too coarse).
            stats_dtype = torch.promote_types(flat.dtype, torch.float32)
            variance, mean = torch.var_mean(flat.to(stats_dtype), dim=0, unbiased=False)
            self._update_running_stats(mean, variance, flat.shape[0])
        else:
            mean, variance = norm.running_mean, norm.running_var
        scale = norm.weight * torch.rsqrt(variance + norm.eps)
        shift = norm.bias - mean * scale
        if self.input_projection is None:
            return hidden_states * scale.to(hidden_states.dtype) + shift.to(
                hidden_states.dtype
            )
        weight = self.input_projection.weight
        fused_weight = weight * scale.unsqueeze(0)
        fused_bias = self.input_projection.bias + weight @ shift
        return F.linear(hidden_states, fused_weight, fused_bias)

    @torch.no_grad()
    def _update_running_stats(
        self, mean: torch.Tensor, variance: torch.Tensor, count: int
    ) -> None:
        """Updates the BatchNorm buffers as ``nn.BatchNorm1d`` would."""
        norm = self.input_norm
        norm.num_batches_tracked += 1
        momentum = norm.momentum
        if momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
        unbiased = variance * count / max(count - 1, 1)
        norm.running_mean.lerp_(mean.detach(), momentum)
        norm.running_var.lerp_(unbiased.detach(), momentum)

    def _gates(self, heads: torch.Tensor) -> torch.Tensor:
        """Squeeze-Excitation over the layer axis, per frame and head.

        Arguments
        ---------
        heads : torch.Tensor
            Projected hidden states split into heads, (L, B, T, h, d).

        Returns
        -------
        torch.Tensor
            Gates alpha, (h, B*T, L), after dropout in training.
        """
        num_layers, batch, frames, num_heads, _ = heads.shape
        average = heads.mean(dim=-1)
        maximum = heads.max(dim=-1).values  # cheaper backward than amax, see forward()
        # (L, B, T, h) x2 -> (h, 2*B*T, L): both descriptors share each head's MLP.
        descriptors = torch.cat([average, maximum], dim=1)
        descriptors = descriptors.to(torch.promote_types(descriptors.dtype, torch.float32))
        descriptors = descriptors.permute(3, 1, 2, 0).reshape(num_heads, -1, num_layers)
        hidden = F.relu(torch.baddbmm(self.squeeze_bias, descriptors, self.squeeze_weight))
        excited = torch.baddbmm(self.excite_bias, hidden, self.excite_weight)
        excited = excited.view(num_heads, 2, batch * frames, num_layers)
        gates = torch.sigmoid(excited[:, 0] + excited[:, 1])
        return self.gate_dropout(gates)
