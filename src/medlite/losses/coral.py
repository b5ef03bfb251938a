"""CORAL: align the second-order statistics of source and target features.

Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016 workshops
(arXiv 1607.01719)::

    L_CORAL = || C_S - C_T ||_F^2 / (4 d^2)

with ``C_S``, ``C_T`` the (d, d) unbiased feature covariances of a source and a target batch. It needs no
target labels, so it can be minimised on an unlabelled target domain alongside the source cross-entropy.
"""

from __future__ import annotations

from torch import Tensor, nn

from medlite.errors import MedliteError


def feature_covariance(features: Tensor) -> Tensor:
    """Unbiased covariance of (n, d) features, float32 (d, d); n >= 2."""
    x = features.float()
    x = x - x.mean(dim=0, keepdim=True)
    return x.T @ x / (x.shape[0] - 1)


class CORALLoss(nn.Module):
    """``||cov(source) - cov(target)||_F^2 / (4 d^2)``.

    Shape:
        ``source``: (n_s, d) and ``target``: (n_t, d) float features (e.g. pooled pre-logits), n_s, n_t >= 2;
        the batches may differ in size. Output: scalar float32 tensor >= 0; gradients flow into both inputs.

    Example:
        >>> loss = CORALLoss()(model_features(x_source), model_features(x_target))
    """

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
            raise MedliteError(
                f"CORAL needs (n, d) source and target features with the same d, got "
                f"{tuple(source.shape)} and {tuple(target.shape)}"
            )
        if source.shape[0] < 2 or target.shape[0] < 2:
            raise MedliteError("CORAL needs at least 2 source and 2 target samples per batch (a covariance)")
        d = source.shape[1]
        diff = feature_covariance(source) - feature_covariance(target)
        return (diff * diff).sum() / (4.0 * d * d)
