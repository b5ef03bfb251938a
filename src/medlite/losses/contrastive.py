"""NT-Xent, the normalised-temperature cross-entropy loss of SimCLR.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv 2002.05709). For a batch of N images with two views each, every embedding ``z_i`` of the
2N has one positive (the other view of its image) and 2N - 2 negatives (all other embeddings)::

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )

with cosine similarity ``sim``; the loss is the mean of ``l`` over all 2N ordered positive pairs. No memory
bank. METHODS.md §7: tau 0.5 for batches up to 512 (0.2 from 1024), l2-normalised 128-d projections.

Under DDP each process holds only its own N images. ``gather_distributed=True`` (as lightly's
``NTXentLoss(gather_distributed=True)``) all-gathers the embeddings of every process, so each anchor is
contrasted with the 2 W N - 2 negatives of the whole global batch of W processes; the anchors stay local and
gradients flow back to the process that computed each embedding (:class:`_GatherWithGrad`). The mean of the W
per-process losses then equals the loss of one process over the concatenated batch, and DDP's gradient average
equals its gradient. Without it each process contrasts its N images among themselves (2 N - 2 negatives).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from medlite.errors import MedliteError


class _GatherWithGrad(torch.autograd.Function):
    """All-gather (N, D) from every process into W tensors; backward sums every process's gradient for each
    piece and returns this process's own (the embeddings it computed)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:  # noqa: ANN001 (autograd's ctx)
        pieces = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, x.contiguous())
        return tuple(pieces)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:  # noqa: ANN001
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)  # sum over processes: every process's loss used every piece
        return stacked[dist.get_rank()]


def _distributed_world() -> int:
    """Processes in the default process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class NTXentLoss(nn.Module):
    """NT-Xent over two views: ``loss = NTXentLoss(temperature=0.5)(z0, z1)``.

    Args:
        temperature: tau > 0; lower values sharpen the softmax over negatives (0.5 suits small batches).
        gather_distributed: under ``torch.distributed`` with W > 1 processes, take the negatives from every
            process's batch (all processes must pass the same N); a no-op without a process group or with W = 1.

    Shape:
        ``z0``, ``z1``: (N, D) float embeddings of the two views of the same N images, row i of ``z0`` and
        row i of ``z1`` being a positive pair; they need not be normalised (the loss normalises). N >= 2, or
        N >= 1 when gathering over W >= 2 processes.
        Output: scalar float32 tensor (mean over this process's 2N ordered positive pairs).

    Example:
        >>> criterion = NTXentLoss(temperature=0.5)
        >>> loss = criterion(torch.randn(8, 128), torch.randn(8, 128))
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise MedliteError(f"temperature: must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        if z0.ndim != 2 or z0.shape != z1.shape:
            raise MedliteError(
                f"NT-Xent needs two (N, D) embeddings of equal shape, got {tuple(z0.shape)} and "
                f"{tuple(z1.shape)}"
            )
        n = z0.shape[0]
        world = _distributed_world() if self.gather_distributed else 1
        if n * world < 2:
            raise MedliteError("NT-Xent needs at least 2 images per batch (there are no negatives otherwise)")
        # float32 even under autocast: the logits go through exp() and bf16 loses the small differences.
        z0, z1 = F.normalize(z0.float(), dim=1), F.normalize(z1.float(), dim=1)
        anchors = torch.cat([z0, z1])  # (2N, D), this process's
        rank = dist.get_rank() if world > 1 else 0
        if world > 1:
            # Keys in the order of one process holding the concatenated batch: all first views, then all second.
            keys = torch.cat([*_GatherWithGrad.apply(z0), *_GatherWithGrad.apply(z1)])  # (2WN, D)
        else:
            keys = anchors
        logits = anchors @ keys.T / self.temperature  # (2N, 2WN)
        local = torch.arange(n, device=z0.device) + rank * n  # this process's images in the global batch
        self_index = torch.cat([local, local + world * n])
        # An embedding is never its own negative: drop it from its own softmax.
        logits[torch.arange(2 * n, device=z0.device), self_index] = float("-inf")
        positives = torch.cat([local + world * n, local])
        return F.cross_entropy(logits, positives)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
