"""Layer Attentive Pooling (LAP): fuses every hidden state of an SSL model.

LAP normalises and projects each layer, computes per-frame, per-head
Squeeze-Excitation gates over the layer axis and max-pools the gated layers
(arXiv 2512.22148). The formulation is in ``docs/lap_spec.md`` section 2.

The (L, B, T, D) stack of hidden states is by far the largest tensor of the
backend, so LAP runs as one autograd function with a hand-written backward
that keeps at most about one more tensor of that size alive:

- the input BatchNorm is folded into the D x D projection (an affine map per
  channel folds exactly into the matrix), its statistics are computed without
  an input-sized temporary, and its gradient with respect to the input is
  added in place;
- the maximum over layers is taken in row blocks, keeping the winning layer
  of each channel (one byte) and the projected value there; the projection
  itself is not kept for backward;
- the backward pass builds the projection's gradient in one buffer (routing,
  gate path and squeeze all add into it) and, when the input needs a
  gradient, overwrites that buffer block by block with it.

The small parts (the fold and the gate MLP) are recomputed under autograd in
the backward pass, so their gradients are autograd's own.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lap_speechbrain.nnet.sync_batchnorm import all_reduce_moments, synchronises

LAYER_POOLINGS = ("max", "mean", "sum")

# Row blocks for the passes that would otherwise need an input-sized temporary
# (statistics in fp32 of a bf16 input, gated layers, the input gradient): each
# temporary is then 1/16 of the input.
_BLOCKS = 16


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
        ``"sum"`` (ablations; these keep the projected input for backward).

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
        self.dropout = dropout
        squeeze_size = num_layers // 2

        # Parameters and buffers of the input BatchNorm; the normalisation itself
        # is folded into the projection (see the module docstring). Under DDP,
        # convert_sync_batchnorm turns it into a SyncBatchNorm, and then its
        # statistics span all processes.
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
            Also return the gates alpha (for analysis: no gradient flows
            through them).

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
        mean, variance, settings = self._input_statistics(hidden_states)
        projection = self.input_projection
        pooled, gates = _LayerAttentivePooling.apply(
            settings,
            hidden_states,
            mean,
            variance,
            self.input_norm.weight,
            self.input_norm.bias,
            None if projection is None else projection.weight,
            None if projection is None else projection.bias,
            self.squeeze_weight,
            self.squeeze_bias,
            self.excite_weight,
            self.excite_bias,
        )
        output = self.output_projection(pooled.reshape(batch, frames, width))
        output = self.output_norm(output.reshape(batch * frames, -1))
        output = output.view(batch, frames, self.output_size)
        if return_gates:
            return output, gates
        return output

    def _input_statistics(
        self, hidden_states: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, "_Settings"]:
        """Mean and variance for the input BatchNorm, and the settings of the pass.

        In training: the biased moments over layers, batch and time (of all
        processes when the norm is synchronised), and the running statistics
        are updated as ``nn.BatchNorm1d`` would; otherwise the running ones.
        """
        norm = self.input_norm
        group, synchronised = None, False
        if norm.training:
            flat = hidden_states.detach().reshape(-1, self.input_size)
            mean, variance = _moments(flat)
            count = flat.shape[0]
            if synchronises(norm):
                group, synchronised = norm.process_group, True
                mean, variance, count = all_reduce_moments(mean, variance, count, group)
            self._update_running_stats(mean, variance, count)
        else:
            mean, variance, count = norm.running_mean, norm.running_var, 0
        settings = _Settings(
            num_heads=self.num_heads,
            layer_pooling=self.layer_pooling,
            eps=norm.eps,
            dropout=self.dropout if self.training else 0.0,
            statistics_count=count,
            synchronised=synchronised,
            process_group=group,
        )
        return mean, variance, settings

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
        norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)


class _Settings(NamedTuple):
    """What the autograd function needs besides tensors."""

    num_heads: int
    layer_pooling: str
    eps: float
    dropout: float  # 0 outside training
    statistics_count: int  # rows behind batch statistics (all processes); 0: running statistics
    synchronised: bool  # batch statistics reduced across processes
    process_group: Optional["dist.ProcessGroup"]


def _blocks(size: int):
    """Slices cutting ``range(size)`` into at most ``_BLOCKS`` blocks."""
    step = max(1, -(-size // _BLOCKS))
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def _index_dtype(size: int) -> torch.dtype:
    """The smallest integer type that holds positions below ``size``."""
    return torch.uint8 if size <= 256 else torch.int32


def _moments(flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Biased mean and variance of each column of (rows, D), in at least fp32.

    A bf16 input is converted block by block (Chan's pairwise update), so no
    fp32 copy of the whole input is made.
    """
    dtype = torch.promote_types(flat.dtype, torch.float32)
    if flat.dtype == dtype:
        variance, mean = torch.var_mean(flat, dim=0, correction=0)
        return mean, variance
    mean = flat.new_zeros(flat.shape[1], dtype=dtype)
    squares = torch.zeros_like(mean)
    seen = 0
    for rows in _blocks(flat.shape[0]):
        block_variance, block_mean = torch.var_mean(flat[rows].to(dtype), dim=0, correction=0)
        count = rows.stop - rows.start
        total = seen + count
        delta = block_mean - mean
        mean += delta * (count / total)
        squares += block_variance * count + delta.square() * (seen * count / total)
        seen = total
    return mean, squares / seen


def _fold(
    mean: torch.Tensor,
    variance: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm folded into the projection: U = x W'^T + b' equals W(BN(x)) + b.

    W' = W diag(gamma / sigma), b' = b + W (beta - gamma mu / sigma). Without a
    projection it returns the BatchNorm's own per-channel scale and shift.
    """
    scale = norm_weight * torch.rsqrt(variance + eps)
    shift = norm_bias - mean * scale
    if weight is None:
        return scale, shift
    return weight * scale.unsqueeze(0), bias + weight @ shift


def _excite(
    average: torch.Tensor,
    maximum: torch.Tensor,
    squeeze_weight: torch.Tensor,
    squeeze_bias: torch.Tensor,
    excite_weight: torch.Tensor,
    excite_bias: torch.Tensor,
) -> torch.Tensor:
    """Squeeze-Excitation over the layer axis, per frame and head.

    Arguments
    ---------
    average, maximum : torch.Tensor
        Mean and max over each head's channels, (L, N, h) for N = B*T frames.

    Returns
    -------
    torch.Tensor
        Sigmoid gates before dropout, (h, N, L).
    """
    num_layers, frames, num_heads = average.shape
    # (L, 2N, h) -> (h, 2N, L): both descriptors share each head's MLP.
    descriptors = torch.cat([average, maximum], dim=1)
    descriptors = descriptors.to(torch.promote_types(descriptors.dtype, torch.float32))
    descriptors = descriptors.permute(2, 1, 0).contiguous()
    hidden = F.relu(torch.baddbmm(squeeze_bias, descriptors, squeeze_weight))
    excited = torch.baddbmm(excite_bias, hidden, excite_weight)
    excited = excited.view(num_heads, 2, frames, num_layers)
    return torch.sigmoid(excited[:, 0] + excited[:, 1])


class _LayerAttentivePooling(torch.autograd.Function):
    """Normalise, project, gate and pool over layers: (L, B, T, D) -> (B, T, D).

    Inputs after ``settings``: hidden_states, mean, variance (constants to
    autograd; the input gradient through batch statistics is added here),
    norm weight and bias, projection weight and bias (or None), the four MLP
    tensors. Outputs the pooled frames and the gates (B, h, T, L), the latter
    without gradient.
    """

    @staticmethod
    def forward(ctx, settings: _Settings, hidden_states, mean, variance, norm_weight,
                norm_bias, weight, bias, squeeze_weight, squeeze_bias, excite_weight,
                excite_bias):
        num_layers, batch, frames, width = hidden_states.shape
        num_heads, frame_count = settings.num_heads, batch * frames
        flat = hidden_states.reshape(-1, width)
        folded = _fold(mean, variance, norm_weight, norm_bias, settings.eps, weight, bias)
        projected = _project(flat, *folded)
        heads = projected.view(num_layers, frame_count, num_heads, -1)
        # sum / d, not mean(): the CPU mean of a bf16 tensor makes an fp32 copy of it.
        average = heads.sum(dim=-1) / heads.shape[-1]
        maximum, channel = heads.max(dim=-1)
        gates = _excite(average, maximum, squeeze_weight, squeeze_bias, excite_weight, excite_bias)
        dropout_scale = None
        if settings.dropout > 0:
            # The same draws as nn.Dropout on the gates; kept for the backward pass.
            dropout_scale = F.dropout(torch.ones_like(gates), settings.dropout)
            gates = gates * dropout_scale
        pooled, kept = _pool_layers(heads, gates, settings.layer_pooling, any(ctx.needs_input_grad))

        ctx.settings = settings
        ctx.autocast = (
            hidden_states.device.type,
            torch.get_autocast_dtype(hidden_states.device.type),
            torch.is_autocast_enabled(hidden_states.device.type),
        )
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(
                hidden_states, mean, variance, norm_weight, norm_bias, weight, bias,
                squeeze_weight, squeeze_bias, excite_weight, excite_bias,
                average, maximum, channel.to(_index_dtype(heads.shape[-1])),
                dropout_scale, *kept,
            )
        gates_out = gates.view(num_heads, batch, frames, num_layers).permute(1, 0, 2, 3)
        ctx.mark_non_differentiable(gates_out)
        return pooled.view(batch, frames, width), gates_out

    @staticmethod
    def backward(ctx, grad_pooled, _grad_gates):
        (hidden_states, mean, variance, norm_weight, norm_bias, weight, bias,
         squeeze_weight, squeeze_bias, excite_weight, excite_bias,
         average, maximum, channel, dropout_scale, *kept) = ctx.saved_tensors
        settings, needs = ctx.settings, ctx.needs_input_grad
        num_layers, batch, frames, width = hidden_states.shape
        device_type, autocast_dtype, autocast_enabled = ctx.autocast
        grad_pooled = grad_pooled.reshape(batch * frames, settings.num_heads, -1)
        upstream = any(needs[1:8])  # the input, the norm or the projection

        # The gate MLP again under autograd, in the forward pass's precision.
        mlp_wanted = list(needs[8:12])
        with torch.enable_grad(), torch.autocast(device_type, autocast_dtype, autocast_enabled):
            descriptors = [t.detach().requires_grad_(upstream) for t in (average, maximum)]
            mlp = [
                t.detach().requires_grad_(want)
                for t, want in zip((squeeze_weight, squeeze_bias, excite_weight, excite_bias), mlp_wanted)
            ]
            gates = _excite(*descriptors, *mlp)
            if dropout_scale is not None:
                gates = gates * dropout_scale
        with torch.autocast(device_type, enabled=False):
            grad_heads, grad_gates = _pool_layers_backward(
                grad_pooled, gates.detach(), settings.layer_pooling, num_layers, upstream, kept
            )
            sources = (descriptors if upstream else []) + [t for t in mlp if t.requires_grad]
            grads = iter(torch.autograd.grad(gates, sources, grad_gates) if sources else ())
            grad_descriptors = [next(grads), next(grads)] if upstream else None
            grad_mlp = [next(grads) if want else None for want in mlp_wanted]
            if not upstream:
                return (None,) * 8 + tuple(grad_mlp)
            _add_squeeze_gradient(grad_heads, channel, *grad_descriptors)
            # Handed over in a list so that _project_backward holds the last reference.
            holder = [grad_heads.view(-1, width)]
            del grad_heads
            grad_upstream = _project_backward(
                ctx, holder, hidden_states, (mean, variance, norm_weight, norm_bias, weight, bias)
            )
        return (None, *grad_upstream, *grad_mlp)


def _project(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """U = x W'^T + b' (matrix ``weight``) or x * scale + shift (vector ``weight``)."""
    if weight.dim() == 2:
        return F.linear(flat, weight, bias)
    return flat * weight.to(flat.dtype) + bias.to(flat.dtype)


def _pool_layers(
    heads: torch.Tensor, gates: torch.Tensor, layer_pooling: str, for_backward: bool
) -> Tuple[torch.Tensor, list]:
    """Gated pooling over layers, in blocks of frames.

    Arguments
    ---------
    heads : torch.Tensor
        Projected frames split into heads, (L, N, h, d).
    gates : torch.Tensor
        alpha, (h, N, L).
    layer_pooling : str
        ``"max"``, ``"mean"`` or ``"sum"``.
    for_backward : bool
        Return what the backward pass needs.

    Returns
    -------
    pooled : torch.Tensor
        (N, h, d), in the dtype of ``heads``.
    kept : list
        For max: the winning layer (N, h, d) as small integers and the
        projected value there; for mean/sum: ``heads``. Empty without backward.
    """
    num_layers, frame_count = heads.shape[:2]
    weights = gates.permute(2, 1, 0).to(heads.dtype).unsqueeze(-1)  # (L, N, h, 1)
    pooled = heads.new_empty(heads.shape[1:])
    if layer_pooling != "max":
        for rows in _blocks(frame_count):
            gated = heads[:, rows] * weights[:, rows]
            pooled[rows] = gated.mean(dim=0) if layer_pooling == "mean" else gated.sum(dim=0)
        return pooled, [heads] if for_backward else []
    layer = torch.empty(heads.shape[1:], dtype=_index_dtype(num_layers), device=heads.device)
    selected = torch.empty_like(pooled) if for_backward else None
    for rows in _blocks(frame_count):
        values, positions = (heads[:, rows] * weights[:, rows]).max(dim=0)
        pooled[rows] = values
        layer[rows] = positions
        if for_backward:
            selected[rows] = heads[:, rows].gather(0, positions.unsqueeze(0)).squeeze(0)
    return pooled, [layer, selected] if for_backward else []


def _pool_layers_backward(
    grad_pooled: torch.Tensor,
    gates: torch.Tensor,
    layer_pooling: str,
    num_layers: int,
    upstream: bool,
    kept: list,
) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Gradients of the gated pooling.

    Returns
    -------
    grad_heads : torch.Tensor or None
        (L, N, h, d), the one input-sized buffer of the backward pass (None
        when nothing upstream needs a gradient).
    grad_gates : torch.Tensor
        (h, N, L).
    """
    frame_count, num_heads, head_size = grad_pooled.shape
    grad_heads = None
    if layer_pooling == "max":
        layer, selected = kept
        by_frame = gates.permute(1, 0, 2)  # (N, h, L)
        grad_gates = torch.zeros_like(by_frame)
        if upstream:
            grad_heads = grad_pooled.new_zeros(num_layers, frame_count, num_heads, head_size)
        for rows in _blocks(frame_count):  # blocks: int64 positions are 2-4x a block's size
            positions = layer[rows].long()
            grad_block = grad_pooled[rows]
            grad_gates[rows].scatter_add_(2, positions, (grad_block * selected[rows]).to(gates.dtype))
            if upstream:
                gate_there = by_frame[rows].gather(2, positions).to(grad_pooled.dtype)
                _scatter_copy_(grad_heads[:, rows], 0, positions.unsqueeze(0),
                               (grad_block * gate_there).unsqueeze(0))
        return grad_heads, grad_gates.permute(1, 0, 2)
    (heads,) = kept
    factor = 1.0 / num_layers if layer_pooling == "mean" else 1.0
    grad_scaled = grad_pooled * factor
    grad_gates = gates.new_empty(num_layers, frame_count, num_heads)
    for rows in _blocks(frame_count):
        grad_gates[:, rows] = (heads[:, rows] * grad_scaled[rows]).sum(dim=-1).to(gates.dtype)
    if upstream:
        weights = gates.permute(2, 1, 0).to(grad_pooled.dtype).unsqueeze(-1)
        grad_heads = grad_pooled.new_empty(num_layers, frame_count, num_heads, head_size)
        torch.mul(grad_scaled, weights, out=grad_heads)
    return grad_heads, grad_gates.permute(2, 1, 0)


def _add_squeeze_gradient(grad_heads, channel, grad_average, grad_maximum) -> None:
    """Adds the gradients of the mean and max over each head's channels, in place."""
    head_size = grad_heads.shape[-1]
    grad_heads.add_((grad_average / head_size).unsqueeze(-1).to(grad_heads.dtype))
    # One channel per (layer, frame, head): gather, add and write back equals
    # scatter_add_, without its fp32 copy of a whole bf16 target on CPU.
    channel = channel.long().unsqueeze(-1)
    there = grad_heads.gather(3, channel) + grad_maximum.unsqueeze(-1).to(grad_heads.dtype)
    _scatter_copy_(grad_heads, 3, channel, there)


def _scatter_copy_(target: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor) -> None:
    """``target.scatter_(dim, index, source)`` as a copy of bits: the CPU kernel
    converts a whole 16-bit float target to fp32 and back (3x its size)."""
    if target.element_size() == 2:
        target, source = target.view(torch.int16), source.view(torch.int16)
    target.scatter_(dim, index, source)


def _project_backward(ctx, grad_holder, hidden_states, fold_inputs):
    """Gradients of U = folded projection of the input, from dL/dU (rows, D).

    ``grad_holder`` is a one-element list holding dL/dU, so that this function
    can drop the last reference to it: in stage 1 the buffer is freed before
    the fold's backward, in stage 2 it becomes the input gradient (block by
    block, when the dtypes allow). The fold runs again under autograd for the
    gradients of the norm, the projection and the batch statistics.

    Returns
    -------
    list
        Gradients of (input, mean, variance, norm weight, norm bias,
        projection weight, projection bias); None where not needed.
    """
    settings, needs = ctx.settings, ctx.needs_input_grad
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    batch_statistics = settings.statistics_count > 0
    device_type, autocast_dtype, autocast_enabled = ctx.autocast
    # Leaves: mean and variance (for the input gradient through batch statistics),
    # norm weight and bias, projection weight and bias.
    wanted = [needs[1] and batch_statistics] * 2 + list(needs[4:8])
    with torch.enable_grad(), torch.autocast(device_type, autocast_dtype, autocast_enabled):
        leaves = [
            None if t is None else t.detach().requires_grad_(want)
            for t, want in zip(fold_inputs, wanted)
        ]
        folded_weight, folded_bias = _fold(*leaves[:4], settings.eps, *leaves[4:])

    grad_projected = grad_holder.pop()
    compute = grad_projected.dtype
    if folded_weight.dim() == 2:
        grad_folded_weight = grad_projected.t().mm(flat.to(compute))
    else:
        accumulate = torch.promote_types(compute, torch.float32)
        grad_folded_weight = torch.zeros_like(folded_weight, dtype=accumulate)
        for rows in _blocks(flat.shape[0]):
            grad_folded_weight += (grad_projected[rows] * flat[rows].to(compute)).sum(0, dtype=accumulate)
    grad_folded_bias = grad_projected.sum(0)
    grad_input = None
    if needs[1]:
        grad_input = _projection_input_gradient(grad_projected, folded_weight.detach(), flat.dtype)
    del grad_projected

    sources = [leaf for leaf, want in zip(leaves, wanted) if want]
    grads = iter(torch.autograd.grad(
        (folded_weight, folded_bias),
        sources,
        (grad_folded_weight.to(folded_weight.dtype), grad_folded_bias.to(folded_bias.dtype)),
    ) if sources else ())
    grad_leaves = [next(grads) if want else None for want in wanted]
    if grad_input is not None and batch_statistics:
        _add_statistics_gradient(grad_input, flat, leaves[0].detach(), *grad_leaves[:2], settings)
    if grad_input is not None:
        grad_input = grad_input.view(hidden_states.shape)
    return [grad_input, None, None, *grad_leaves[2:]]


def _projection_input_gradient(grad_projected, folded_weight, dtype):
    """dL/dU W' (or dL/dU * scale), written over ``grad_projected`` block by
    block when the input has its dtype (else into a new tensor of ``dtype``)."""
    matrix = folded_weight.dim() == 2
    # U = x W'^T, so dL/dx = dL/dU W'. Multiplying by the transpose of a
    # contiguous W'^T runs the "NT" GEMM: on CPUs without native bf16 the
    # plain "NN" bf16 product is about 10x slower.
    weight = folded_weight.t().contiguous().t() if matrix else folded_weight
    weight = weight.to(grad_projected.dtype)
    grad_input = grad_projected if dtype == grad_projected.dtype else torch.empty_like(grad_projected, dtype=dtype)
    for rows in _blocks(grad_projected.shape[0]):
        block = grad_projected[rows]
        grad_input[rows] = block.mm(weight) if matrix else block * weight
    return grad_input


def _add_statistics_gradient(grad_input, flat, mean, grad_mean, grad_variance, settings) -> None:
    """Adds the input gradient through the batch statistics, in place.

    dL/dx_i gains dL/dmu / n + dL/dvar 2 (x_i - mu) / n over the n rows of the
    whole batch. Under a synchronised norm every process's loss depends on
    the statistics, so dL/dmu and dL/dvar are first summed over the processes.
    """
    if settings.synchronised:
        packed = torch.cat([grad_mean, grad_variance])
        dist.all_reduce(packed, group=settings.process_group)
        grad_mean, grad_variance = packed.chunk(2)
    count = settings.statistics_count
    slope = 2.0 * grad_variance / count
    offset = grad_mean / count - slope * mean
    grad_input.add_(offset.to(grad_input.dtype)).addcmul_(flat, slope.to(grad_input.dtype))
