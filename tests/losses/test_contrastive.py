from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.errors import MedliteError
from medlite.losses import NTXentLoss


def _ntxent_reference(z0: np.ndarray, z1: np.ndarray, tau: float) -> float:
    """NT-Xent written out term by term from Chen et al. 2020, eq. (1), in float64."""
    z = np.concatenate([z0, z1]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sims = np.array([z[i] @ z[k] / tau for k in range(n2)])
        denominator = sum(np.exp(sims[k]) for k in range(n2) if k != i)
        total += -np.log(np.exp(sims[j]) / denominator)
    return total / n2


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("dim", [3, 128])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_ntxent_matches_numpy_reference(n: int, dim: int, tau: float) -> None:
    rng = np.random.default_rng(n * 1000 + dim)
    z0, z1 = rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=(n, dim)).astype(np.float32)
    loss = NTXentLoss(temperature=tau)(torch.from_numpy(z0), torch.from_numpy(z1))
    assert loss.item() == pytest.approx(_ntxent_reference(z0, z1, tau), rel=1e-4, abs=1e-5)


def test_ntxent_prefers_aligned_views_and_ignores_scale() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    criterion = NTXentLoss(0.5)
    aligned, random = criterion(z, z + 0.01 * torch.randn(8, 16)), criterion(z, torch.randn(8, 16))
    assert aligned < random
    # cosine similarity: rescaling embeddings changes nothing
    assert criterion(3.0 * z, z).item() == pytest.approx(criterion(z, z).item(), rel=1e-5)


def test_ntxent_gradients_reach_both_views() -> None:
    z0, z1 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    NTXentLoss(0.5)(z0, z1).backward()
    assert z0.grad is not None and z1.grad is not None
    assert z0.grad.abs().sum() > 0 and z1.grad.abs().sum() > 0


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_ntxent_rejects_bad_temperature(tau: float) -> None:
    with pytest.raises(MedliteError, match="temperature"):
        NTXentLoss(tau)


def test_ntxent_rejects_bad_shapes() -> None:
    with pytest.raises(MedliteError, match="equal shape"):
        NTXentLoss()(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(MedliteError, match="at least 2"):
        NTXentLoss()(torch.randn(1, 8), torch.randn(1, 8))
