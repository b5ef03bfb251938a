from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.errors import MedliteError
from medlite.losses import CORALLoss, feature_covariance


def _coral_reference(source: np.ndarray, target: np.ndarray) -> float:
    """||C_s - C_t||_F^2 / (4 d^2) with unbiased covariances (Sun & Saenko 2016, eq. 1-3), float64."""
    d = source.shape[1]
    c_s = np.cov(source.astype(np.float64), rowvar=False)
    c_t = np.cov(target.astype(np.float64), rowvar=False)
    return float(np.sum((c_s - c_t) ** 2) / (4 * d * d))


@pytest.mark.parametrize(("n_s", "n_t", "d"), [(2, 2, 1), (8, 5, 4), (32, 16, 64)])
def test_coral_matches_numpy_reference(n_s: int, n_t: int, d: int) -> None:
    rng = np.random.default_rng(d)
    source = rng.normal(size=(n_s, d)).astype(np.float32)
    target = (rng.normal(size=(n_t, d)) * 2 + 1).astype(np.float32)
    loss = CORALLoss()(torch.from_numpy(source), torch.from_numpy(target))
    assert loss.item() == pytest.approx(_coral_reference(source, target), rel=1e-4)


def test_covariance_matches_numpy() -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_allclose(
        feature_covariance(torch.from_numpy(x)).numpy(), np.cov(x, rowvar=False), rtol=1e-5
    )


def test_coral_is_shift_invariant_and_differentiable() -> None:
    source = torch.randn(16, 8, requires_grad=True)
    shifted = source.detach() + 5.0  # same covariance, other mean: CORAL aligns second-order statistics only
    assert CORALLoss()(source, shifted).item() == pytest.approx(0.0, abs=1e-5)
    CORALLoss()(source, 3 * torch.randn(16, 8)).backward()
    assert source.grad is not None and source.grad.abs().sum() > 0


def test_coral_rejects_bad_inputs() -> None:
    with pytest.raises(MedliteError, match="same d"):
        CORALLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(MedliteError, match="at least 2"):
        CORALLoss()(torch.randn(1, 3), torch.randn(4, 3))
