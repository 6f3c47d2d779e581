"""BatchNorm statistics shared by all processes of a distributed run, on any device.

``torch.nn.SyncBatchNorm`` only runs on CUDA, so under gloo on CPU a DDP run
would normalise each process's share of the batch on its own. ``SyncBatchNorm``
here reduces the statistics with ``torch.distributed`` collectives, which exist
for every backend (gloo, NCCL), and so gives the statistics of the whole batch
everywhere. LAP's input BatchNorm, folded into its projection, reads the same
module (see ``LayerAttentivePooling``). ``convert_sync_batchnorm`` converts a
model before it is wrapped in ``DistributedDataParallel``.

Authors
 * lap-speechbrain contributors 2026
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over channel axis 1 whose training statistics span all processes.

    In training mode inside an initialised process group of more than one
    process, the mean and (biased) variance are those of the batch
    concatenated over the processes, and so are the running statistics; the
    backward pass reduces the gradients of the statistics across the processes
    too (differentiable all-reduce), so the input gradients are those of one
    process on the whole batch. Otherwise it is a plain BatchNorm.

    Arguments
    ---------
    num_features : int
        Channels C (axis 1 of the input).
    eps : float
        Added to the variance.
    momentum : float or None
        Running-statistics momentum; None for a cumulative average.
    affine : bool
        Learn a scale and shift per channel.
    track_running_stats : bool
        Keep running statistics for eval mode.
    process_group : torch.distributed.ProcessGroup or None
        The processes to reduce over; None for the default (world) group.

    Example
    -------
    >>> norm = SyncBatchNorm(4)
    >>> norm(torch.randn(8, 4, 10)).shape  # no process group: a plain BatchNorm
    torch.Size([8, 4, 10])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Optional[dist.ProcessGroup] = None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects (N, C, ...) input, got shape {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalises ``input`` (N, C, ...) over every axis but 1."""
        if not synchronises(self):
            return super().forward(input)
        self._check_input_dim(input)
        axes = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        # Statistics in at least fp32 (bf16 sums over many rows are too coarse).
        values = input.to(torch.promote_types(input.dtype, torch.float32))
        local_count = values.new_tensor([input.numel() / input.shape[1]])
        sums = self._all_reduce(torch.cat([values.sum(dim=axes), local_count]))
        count = sums[-1:]
        mean = sums[:-1] / count
        centred = values - mean.view(shape)
        variance = self._all_reduce(centred.square().sum(dim=axes)) / count
        self._update_running_stats(mean, variance, count)
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.weight is not None:
            output = output * self.weight.view(shape)
        if self.bias is not None:
            output = output + self.bias.view(shape)
        return output.to(input.dtype)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the processes; its backward sums the gradients likewise."""
        return _AllReduceSum.apply(tensor, self.process_group)

    @torch.no_grad()
    def _update_running_stats(
        self, mean: torch.Tensor, variance: torch.Tensor, count: torch.Tensor
    ) -> None:
        """Updates the running statistics as ``nn.BatchNorm1d`` does, with the global count."""
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        momentum = self.momentum
        if momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = variance * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: every process's loss depends on the
    sum, so the gradient is the sum of the processes' gradients. (torch's own,
    ``torch.distributed.nn.functional.all_reduce``, is deprecated.)"""

    @staticmethod
    def forward(ctx, tensor, process_group):
        ctx.process_group = process_group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=process_group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.process_group), None


def synchronises(norm: nn.Module) -> bool:
    """True when ``norm`` is a SyncBatchNorm (ours or torch's) whose training
    statistics are reduced across more than one process right now.

    Example
    -------
    >>> synchronises(SyncBatchNorm(4)), synchronises(nn.BatchNorm1d(4))
    (False, False)
    """
    return (
        isinstance(norm, (SyncBatchNorm, nn.SyncBatchNorm))
        and norm.training
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size(norm.process_group) > 1
    )


def all_reduce_moments(
    mean: torch.Tensor,
    variance: torch.Tensor,
    count: int,
    process_group: Optional[dist.ProcessGroup] = None,
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Combines per-process biased moments into those of the whole batch.

    Two all-reduces (count and sum, then the centred sum of squares), so the
    variance has no cancellation however large the mean. No autograd.

    Arguments
    ---------
    mean : torch.Tensor
        This process's mean per channel, (C,).
    variance : torch.Tensor
        This process's biased variance per channel, (C,).
    count : int
        Values per channel on this process.
    process_group : torch.distributed.ProcessGroup or None
        The processes to reduce over; None for the default group.

    Returns
    -------
    mean, variance : torch.Tensor
        Biased moments of the concatenated batch, (C,).
    count : int
        Values per channel over all processes.
    """
    with torch.no_grad():
        # float64: sums and counts over millions of rows stay exact enough.
        packed = torch.cat([mean.double() * count, mean.new_tensor([count], dtype=torch.float64)])
        dist.all_reduce(packed, group=process_group)
        total = packed[-1]
        global_mean = packed[:-1] / total
        # Each process's M2 around the global mean: its own M2 plus n (m_p - m)^2.
        squares = (variance.double() + (mean.double() - global_mean).square()) * count
        dist.all_reduce(squares, group=process_group)
        return global_mean.to(mean.dtype), (squares / total).to(variance.dtype), int(total.item())


def convert_sync_batchnorm(
    module: nn.Module, process_group: Optional[dist.ProcessGroup] = None
) -> nn.Module:
    """Replaces every BatchNorm of ``module`` by a ``SyncBatchNorm`` with the same state.

    Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, but the result runs
    on CPU (gloo) as well as CUDA. Parameters keep their ``requires_grad``, the
    modules their training mode. Call it before wrapping in DDP.

    Arguments
    ---------
    module : torch.nn.Module
        The model (or a BatchNorm itself).
    process_group : torch.distributed.ProcessGroup or None
        The processes to synchronise; None for the default group.

    Returns
    -------
    torch.nn.Module
        ``module`` with its BatchNorms replaced (a new module if ``module`` was one).

    Example
    -------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    >>> type(convert_sync_batchnorm(model)[1]).__name__
    'SyncBatchNorm'
    """
    if isinstance(module, _BatchNorm) and not isinstance(
        module, (SyncBatchNorm, nn.SyncBatchNorm)
    ):
        converted = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
        )
        # The same parameter and buffer objects: optimisers built earlier still see them.
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module
