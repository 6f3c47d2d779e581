"""Schedules stepped once per optimiser step: the AAM margin and the learning rate.

Both are saved and restored by SpeechBrain's ``Checkpointer``. The learning
rate uses torch's schedulers; the margin schedule has no counterpart in torch
or SpeechBrain (it sets a loss attribute, not an optimiser's learning rate).

Authors
 * lap-speechbrain contributors 2026
"""

import math

import numpy as np
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
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


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    peak_lr: float,
    final_lr: float,
    warmup_fraction: float = 0.0,
) -> SequentialLR:
    """Linear warm-up to ``peak_lr``, then a cosine decay to ``final_lr`` (torch's schedulers).

    Stepped once per optimiser step (docs/lap_spec.md section 5): a
    ``LinearLR`` from ``peak_lr / warmup_steps`` to ``peak_lr`` over the
    warm-up steps, then a ``CosineAnnealingLR`` to ``final_lr`` at the last
    step, chained by ``SequentialLR``. With the optimiser's state restored,
    its ``state_dict`` resumes the schedule exactly (SpeechBrain's
    ``Checkpointer`` saves both). A constant learning rate (stage 3) is
    ``warmup_fraction=0`` with ``final_lr == peak_lr``.

    Arguments
    ---------
    optimizer : torch.optim.Optimizer
        Its learning rate is set to the schedule's first value.
    total_steps : int
        Optimiser steps of the whole stage.
    peak_lr : float
        Learning rate at the end of the warm-up.
    final_lr : float
        Learning rate of the last step.
    warmup_fraction : float
        Fraction of the steps spent warming up.

    Returns
    -------
    SequentialLR
        Call ``step()`` after every optimiser step.

    Example
    -------
    >>> optimizer = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    >>> schedule = warmup_cosine_schedule(optimizer, 100, peak_lr=1e-3, final_lr=1e-5, warmup_fraction=0.1)
    >>> lrs = [optimizer.param_groups[0]["lr"]]
    >>> for _ in range(99):
    ...     optimizer.step()
    ...     schedule.step()
    ...     lrs.append(optimizer.param_groups[0]["lr"])
    >>> round(lrs[0], 8), round(lrs[9], 8), round(lrs[-1], 8)  # first, last warm-up step, last step
    (0.0001, 0.001, 1e-05)
    """
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction={warmup_fraction}; expected a value in [0, 1)")
    if peak_lr <= 0 or final_lr < 0:
        raise ValueError(f"peak_lr={peak_lr}, final_lr={final_lr}; expected peak_lr > 0, final_lr >= 0")
    total_steps = max(1, int(total_steps))
    warmup = int(round(warmup_fraction * total_steps))
    for group in optimizer.param_groups:
        group["lr"] = peak_lr
        group.pop("initial_lr", None)  # the schedulers start from peak_lr
    schedulers, milestones = [], []
    if warmup:
        schedulers.append(
            LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
        )
        milestones.append(warmup)
    # The decay reaches final_lr at the last step (T_max of at least 1 step).
    schedulers.append(CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup - 1, 1), eta_min=final_lr))
    return SequentialLR(optimizer, schedulers, milestones)
