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


def _init_gloo(rank: int, world: int, store_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)


def test_gather_distributed_is_a_no_op_without_other_processes(tmp_path) -> None:
    import torch.distributed as dist

    z0, z1 = torch.randn(6, 16), torch.randn(6, 16)
    plain = NTXentLoss(0.5)(z0, z1)
    assert NTXentLoss(0.5, gather_distributed=True)(z0, z1).item() == plain.item()  # no process group
    _init_gloo(0, 1, str(tmp_path / "store"))
    try:
        assert NTXentLoss(0.5, gather_distributed=True)(z0, z1).item() == plain.item()  # world size 1
    finally:
        dist.destroy_process_group()


def _gathered_worker(rank: int, world: int, store_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    _init_gloo(rank, world, store_file)
    z0, z1 = torch.load(f"{out}/inputs.pt")
    n = len(z0) // world
    mine = [z[rank * n:(rank + 1) * n].clone().requires_grad_(True) for z in (z0, z1)]
    gathered = NTXentLoss(0.5, gather_distributed=True)(*mine)
    gathered.backward()
    local = NTXentLoss(0.5)(mine[0].detach(), mine[1].detach())
    torch.save({"gathered": gathered.detach(), "local": local, "grads": [z.grad for z in mine]},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_loss_over_two_processes_equals_one_process_on_the_concatenated_batch(tmp_path) -> None:
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    torch.save((z0, z1), tmp_path / "inputs.pt")
    mp.spawn(_gathered_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    full = [z.clone().requires_grad_(True) for z in (z0, z1)]
    expected = NTXentLoss(0.5)(*full)
    expected.backward()
    # DDP averages the processes' losses and gradients: the mean of the two per-process losses is the loss of one
    # process holding all 8 images, and each process's gradient / 2 is that process's slice of its gradient.
    mean = (ranks[0]["gathered"] + ranks[1]["gathered"]) / 2
    assert mean.item() == pytest.approx(expected.item(), rel=1e-6)
    for r, result in enumerate(ranks):
        for view in range(2):
            torch.testing.assert_close(result["grads"][view] / 2, full[view].grad[r * 4:(r + 1) * 4],
                                       rtol=1e-5, atol=1e-7)
    # Without gathering each process contrasts its 4 images among themselves: a different (easier) loss.
    assert (ranks[0]["local"] + ranks[1]["local"]).item() / 2 != pytest.approx(expected.item(), rel=1e-3)
