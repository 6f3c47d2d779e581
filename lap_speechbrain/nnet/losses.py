"""Additive angular margin softmax with an Inter-TopK penalty and a mutable margin.

Authors
 * lap-speechbrain contributors 2026
"""

import math

import torch
from speechbrain.nnet.losses import AngularMargin

# Cosines are clamped this far inside [-1, 1] so sqrt(1 - cos^2) and its
# gradient stay finite.
COSINE_CLAMP = 1e-7


class AdditiveAngularMarginInterTopK(AngularMargin):
    """AAM-softmax logits with Inter-TopK penalty (docs/lap_spec.md section 4).

    SpeechBrain's ``AdditiveAngularMargin`` computes cos(m), sin(m) and its
    fallback constants once at construction, so the margin cannot follow a
    schedule. This class derives from its parent ``AngularMargin`` (which only
    stores ``margin`` and ``scale``), so no constant computed from a past
    margin exists: every call derives them from ``self.margin``. It adds the
    Inter-TopK penalty: the ``top_k`` non-target classes with the largest
    cosine get cos(theta - m'). ``margin``, ``top_k`` and
    ``top_k_penalty`` are plain attributes that a scheduler may change at any
    step. Everything is computed in fp32, outside autocast. Wrap it in
    SpeechBrain's ``LogSoftmaxWrapper`` to get the cross-entropy.

    Arguments
    ---------
    margin : float
        Additive angular margin m on the target class.
    scale : float
        Logit scale s.
    top_k : int
        Number of hardest non-target classes that get the penalty (0: none).
    top_k_penalty : float
        Angular penalty m' for the top-k classes.

    Example
    -------
    >>> aam = AdditiveAngularMarginInterTopK(margin=0.2, scale=30.0, top_k=1, top_k_penalty=0.06)
    >>> cosine = torch.tensor([[0.9, 0.5, 0.1]])
    >>> targets = torch.tensor([[1.0, 0.0, 0.0]])
    >>> logits = aam(cosine, targets)
    >>> torch.allclose(logits[0, 0], 30 * torch.cos(torch.acos(torch.tensor(0.9)) + 0.2))
    True
    >>> torch.allclose(logits[0, 1], 30 * torch.cos(torch.acos(torch.tensor(0.5)) - 0.06))
    True
    >>> float(logits[0, 2]) == 30 * 0.1
    True
    """

    def __init__(
        self,
        margin: float = 0.2,
        scale: float = 30.0,
        top_k: int = 5,
        top_k_penalty: float = 0.06,
    ):
        super().__init__(margin=margin, scale=scale)
        self.top_k = top_k
        self.top_k_penalty = top_k_penalty

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits with the margins applied.

        Arguments
        ---------
        outputs : torch.Tensor
            Cosines, (N, C).
        targets : torch.Tensor
            One-hot targets, (N, C).

        Returns
        -------
        torch.Tensor
            Scaled logits, (N, C), fp32.
        """
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            cosine = outputs.float().clamp(-1 + COSINE_CLAMP, 1 - COSINE_CLAMP)
            targets = targets.float()
            sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=0.0))
            margin = float(self.margin)
            # cos(theta + m); when theta + m > pi it is no longer monotonic, so
            # fall back to cos(theta) - m sin(m).
            phi = cosine * math.cos(margin) - sine * math.sin(margin)
            phi = torch.where(
                cosine > math.cos(math.pi - margin),
                phi,
                cosine - math.sin(math.pi - margin) * margin,
            )
            logits = targets * phi + (1.0 - targets) * cosine
            if self.top_k > 0 and self.top_k_penalty > 0:
                logits = self._penalise_top_k(logits, cosine, sine, targets)
            return self.scale * logits

    def _penalise_top_k(self, logits, cosine, sine, targets):
        """Replaces the logits of the top-k non-target classes by cos(theta - m')."""
        top_k = min(int(self.top_k), cosine.shape[1] - 1)
        if top_k <= 0:
            return logits
        non_target = cosine.masked_fill(targets.bool(), -2.0)
        hardest = non_target.topk(top_k, dim=1).indices
        penalty = float(self.top_k_penalty)
        penalised = cosine * math.cos(penalty) + sine * math.sin(penalty)
        return logits.scatter(1, hardest, penalised.gather(1, hardest))
