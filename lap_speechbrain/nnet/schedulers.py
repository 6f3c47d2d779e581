"""Schedules stepped once per optimiser step: the AAM margin and the learning rate.

Both are saved and restored by SpeechBrain's ``Checkpointer``.

Authors
 * lap-speechbrain contributors 2026
"""

import math

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

MARGIN_CURVES = ("log", "linear", "exp")


@register_checkpoint_hooks
class MarginScheduler:
    """Raises the AAM margin from ``initial_margin`` to ``final_margin``.

    The margin is ``initial_margin`` for the first ``increase_start_epoch``
    epochs, follows ``curve`` until ``fix_start_epoch``, and stays at
    ``final_margin`` afterwards. The paper's log curve is
    m_i = m_final * ln(x_i / 0.005) / ln(200), x_i = linspace(0.005, 1, N) over
    the N optimiser steps of the ramp. The Inter-TopK penalty m' is scaled with
    the margin (m' * m / m_final, and 0 while m <= 0.001).

    Call :meth:`set_steps_per_epoch` once the data loader is known, then
    :meth:`step` after every optimiser step.

    Arguments
    ---------
    loss_fn : AdditiveAngularMarginInterTopK
        The margin module whose ``margin`` and ``top_k_penalty`` are set.
    initial_margin : float
        Margin before and at the start of the ramp.
    final_margin : float
        Margin at the end of the ramp.
    increase_start_epoch : int
        Epoch (0-based) at which the ramp starts.
    fix_start_epoch : int
        Epoch at which the ramp ends.
    curve : str
        ``"log"`` (the paper), ``"linear"`` or ``"exp"``.
    final_top_k_penalty : float
        Inter-TopK penalty m' once the margin reaches ``final_margin``.

    Example
    -------
    >>> from lap_speechbrain.nnet.losses import AdditiveAngularMarginInterTopK
    >>> aam = AdditiveAngularMarginInterTopK(margin=0.0)
    >>> schedule = MarginScheduler(aam, 0.0, 0.3, 0, 2, final_top_k_penalty=0.06)
    >>> schedule.set_steps_per_epoch(5)
    >>> round(schedule.margin_at(0), 4), round(schedule.margin_at(10), 4)
    (0.0, 0.3)
    """

    def __init__(
        self,
        loss_fn,
        initial_margin: float,
        final_margin: float,
        increase_start_epoch: int,
        fix_start_epoch: int,
        curve: str = "log",
        final_top_k_penalty: float = 0.0,
    ):
        if curve not in MARGIN_CURVES:
            raise ValueError(f"curve={curve!r}; expected one of {MARGIN_CURVES}")
        if fix_start_epoch < increase_start_epoch:
            raise ValueError(
                f"fix_start_epoch={fix_start_epoch} is before "
                f"increase_start_epoch={increase_start_epoch}"
            )
        self.loss_fn = loss_fn
        self.initial_margin = initial_margin
        self.final_margin = final_margin
        self.increase_start_epoch = increase_start_epoch
        self.fix_start_epoch = fix_start_epoch
        self.curve = curve
        self.final_top_k_penalty = final_top_k_penalty
        self.steps_per_epoch = 1
        self.current_step = 0
        self._apply()

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Sets the number of optimiser steps per epoch (from the data loader)."""
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self._apply()

    def margin_at(self, step: int) -> float:
        """The margin after ``step`` optimiser steps."""
        start = self.increase_start_epoch * self.steps_per_epoch
        ramp = (self.fix_start_epoch - self.increase_start_epoch) * self.steps_per_epoch
        if step < start:
            return self.initial_margin
        if ramp <= 0 or step >= start + ramp:
            return self.final_margin
        progress = self._curve((step - start) / max(ramp - 1, 1))
        return self.initial_margin + (self.final_margin - self.initial_margin) * progress

    def _curve(self, fraction: float) -> float:
        """Maps the ramp's fraction in [0, 1] to the margin's fraction in [0, 1]."""
        if self.curve == "linear":
            return fraction
        if self.curve == "log":
            x = 0.005 + (1.0 - 0.005) * fraction
            return math.log(x / 0.005) / math.log(1.0 / 0.005)
        # exp: slow start, fast end; the mirror image of the log curve.
        return float(np.expm1(fraction * math.log(200.0)) / 199.0)

    def step(self) -> float:
        """Advances one optimiser step and applies the new margin; returns it."""
        self.current_step += 1
        return self._apply()

    def _apply(self) -> float:
        margin = self.margin_at(self.current_step)
        self.loss_fn.margin = margin
        if margin <= 0.001 or self.final_margin <= 0:
            self.loss_fn.top_k_penalty = 0.0
        else:
            self.loss_fn.top_k_penalty = self.final_top_k_penalty * margin / self.final_margin
        return margin

    @mark_as_saver
    def save(self, path) -> None:
        """Saves the step counter (Checkpointer hook)."""
        torch.save(
            {"current_step": self.current_step, "steps_per_epoch": self.steps_per_epoch},
            path,
        )

    @mark_as_loader
    def load(self, path, end_of_epoch: bool = False) -> None:
        """Restores the step counter (Checkpointer hook)."""
        del end_of_epoch  # the state is per step, not per epoch
        state = torch.load(path, weights_only=True)
        self.current_step = int(state["current_step"])
        self.steps_per_epoch = int(state["steps_per_epoch"])
        self._apply()


@register_checkpoint_hooks
class WarmupCosineScheduler:
    """Linear warm-up to ``peak_lr``, then a cosine decay to ``final_lr``.

    Stepped once per optimiser step (docs/lap_spec.md section 5). SpeechBrain's
    schedulers do not cover this exactly: ``CyclicCosineScheduler`` warms up
    with a Noam-style curve and decays to zero, ``LinearWarmupScheduler`` decays
    linearly, and ``WarmCoolDecayLRSchedule`` has a fixed cool-down shape; none
    decays to a chosen floor along a cosine. A constant learning rate (stage 3)
    is ``warmup_fraction=0`` with ``final_lr == peak_lr``.

    Call :meth:`set_total_steps` once the data loader is known, :meth:`apply`
    after the optimiser is built, and the scheduler itself after every
    optimiser step (as SpeechBrain's schedulers are called).

    Arguments
    ---------
    peak_lr : float
        Learning rate at the end of the warm-up.
    final_lr : float
        Learning rate after the last step.
    warmup_fraction : float
        Fraction of all optimiser steps spent warming up linearly from
        ``peak_lr / warmup_steps``.

    Example
    -------
    >>> model = torch.nn.Linear(2, 2)
    >>> optimizer = torch.optim.Adam(model.parameters())
    >>> schedule = WarmupCosineScheduler(peak_lr=1e-3, final_lr=1e-5, warmup_fraction=0.1)
    >>> schedule.set_total_steps(100)
    >>> schedule.apply(optimizer)
    0.0001
    >>> for _ in range(9):
    ...     _ = schedule(optimizer)
    >>> optimizer.param_groups[0]["lr"]  # the last warm-up step
    0.001
    >>> for _ in range(90):
    ...     _ = schedule(optimizer)
    >>> round(optimizer.param_groups[0]["lr"], 8)
    1e-05
    """

    def __init__(self, peak_lr: float, final_lr: float, warmup_fraction: float = 0.0):
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={warmup_fraction}; expected a value in [0, 1)")
        if peak_lr <= 0 or final_lr < 0:
            raise ValueError(f"peak_lr={peak_lr}, final_lr={final_lr}; expected peak_lr > 0, final_lr >= 0")
        self.peak_lr = peak_lr
        self.final_lr = final_lr
        self.warmup_fraction = warmup_fraction
        self.total_steps = 1
        self.current_step = 0

    def set_total_steps(self, total_steps: int) -> None:
        """Sets the number of optimiser steps of the whole stage."""
        self.total_steps = max(1, int(total_steps))

    @property
    def warmup_steps(self) -> int:
        """Number of warm-up steps (0 without warm-up)."""
        return int(round(self.warmup_fraction * self.total_steps))

    def lr_at(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based)."""
        warmup = self.warmup_steps
        if step < warmup:
            return self.peak_lr * (step + 1) / warmup
        decay_steps = max(self.total_steps - warmup - 1, 1)
        progress = min((step - warmup) / decay_steps, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr + (self.peak_lr - self.final_lr) * cosine

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        """Sets the learning rate of the current step on ``optimizer``; returns it."""
        lr = self.lr_at(self.current_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def __call__(self, optimizer: torch.optim.Optimizer):
        """Advances one optimiser step; returns (old_lr, new_lr) like SpeechBrain's schedulers."""
        old_lr = optimizer.param_groups[0]["lr"]
        self.current_step += 1
        return old_lr, self.apply(optimizer)

    @mark_as_saver
    def save(self, path) -> None:
        """Saves the step counter (Checkpointer hook)."""
        torch.save({"current_step": self.current_step, "total_steps": self.total_steps}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch: bool = False) -> None:
        """Restores the step counter (Checkpointer hook)."""
        del end_of_epoch  # the state is per step, not per epoch
        state = torch.load(path, weights_only=True)
        self.current_step = int(state["current_step"])
        self.total_steps = int(state["total_steps"])
