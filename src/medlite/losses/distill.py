"""Knowledge-distillation loss (Hinton, Vinyals, Dean 2015, arXiv 1503.02531), as METHODS.md §3 specifies::

    L = alpha * CE(y, softmax(z_s)) + (1 - alpha) * T^2 * KL( p_t || softmax(z_s / T) ),
    p_t = softmax(z_t / T)

The T^2 factor keeps the soft-target gradients on the scale of the hard-label term when T changes. With
several teachers, ``p_t`` is the mean of their softened distributions (an ensemble in probability space,
METHODS.md §3 "mean of softened teacher distributions").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medlite.errors import MedliteError


def soft_targets(teacher_logits: Tensor, temperature: float) -> Tensor:
    """Softened teacher distribution ``p_t``.

    Args:
        teacher_logits: (B, C) logits of one teacher, or (K, B, C) logits of K teachers.
        temperature: T > 0.

    Returns:
        float32 (B, C) probabilities (rows sum to 1); for K teachers the mean of their softened distributions.
    """
    probs = (teacher_logits.float() / temperature).softmax(dim=-1)
    return probs.mean(dim=0) if probs.ndim == 3 else probs


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(p_t || softmax(z_s / T))``, averaged over the batch.

    Args:
        student_logits: (B, C) student logits ``z_s``.
        teacher_logits: (B, C) or (K, B, C) teacher logits (see :func:`soft_targets`).
        temperature: T > 0.

    Returns:
        Scalar float32 tensor, >= 0; gradients flow into ``student_logits`` only.
    """
    p_t = soft_targets(teacher_logits.detach(), temperature)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    # kl_div(input=log q, target=p) = sum p (log p - log q); "batchmean" divides the sum by B, as KL wants.
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


class KDLoss(nn.Module):
    """Hybrid hard-label + soft-target loss: ``alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)``.

    Args:
        alpha: weight of the hard-label cross-entropy in [0, 1] (0.5 by default; 1 = no distillation).
        temperature: softening temperature T > 0 (4 by default).

    Shape:
        ``student_logits``: (B, C); ``teacher_logits``: (B, C) or (K, B, C); ``targets``: int64 (B,) in
        [0, C); ``weight``: optional float (C,) class weights of the CE term; output: scalar float32.

    Example:
        >>> loss = KDLoss(alpha=0.5, temperature=4.0)(student(x), teacher(x), y)
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 4.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise MedliteError(f"kd_alpha: must be in [0, 1], got {alpha!r}")
        if not temperature > 0:
            raise MedliteError(f"kd_temperature: must be > 0, got {temperature!r}")
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        weight: Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        if teacher_logits.shape[-2:] != student_logits.shape:
            raise MedliteError(
                f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                f"{tuple(student_logits.shape)} (same classes needed)"
            )
        hard = F.cross_entropy(
            student_logits.float(), targets, weight=weight, label_smoothing=label_smoothing
        )
        if self.alpha == 1.0:
            return hard
        soft = distillation_kl(student_logits, teacher_logits, self.temperature)
        return self.alpha * hard + (1.0 - self.alpha) * soft

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}"


__all__ = ["KDLoss", "distillation_kl", "soft_targets"]
