"""NT-Xent, the normalised-temperature cross-entropy loss of SimCLR.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv 2002.05709). For a batch of N images with two views each, every embedding ``z_i`` of the
2N has one positive (the other view of its image) and 2N - 2 negatives (all other embeddings)::

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )

with cosine similarity ``sim``; the loss is the mean of ``l`` over all 2N ordered positive pairs. No memory
bank. METHODS.md §7: tau 0.5 for batches up to 512 (0.2 from 1024), l2-normalised 128-d projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlite.errors import MedliteError


class NTXentLoss(nn.Module):
    """NT-Xent over two views: ``loss = NTXentLoss(temperature=0.5)(z0, z1)``.

    Args:
        temperature: tau > 0; lower values sharpen the softmax over negatives (0.5 suits small batches).

    Shape:
        ``z0``, ``z1``: (N, D) float embeddings of the two views of the same N images, row i of ``z0`` and
        row i of ``z1`` being a positive pair; they need not be normalised (the loss normalises). N >= 2.
        Output: scalar float32 tensor (mean over the 2N ordered positive pairs).

    Example:
        >>> criterion = NTXentLoss(temperature=0.5)
        >>> loss = criterion(torch.randn(8, 128), torch.randn(8, 128))
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise MedliteError(f"temperature: must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        if z0.ndim != 2 or z0.shape != z1.shape:
            raise MedliteError(
                f"NT-Xent needs two (N, D) embeddings of equal shape, got {tuple(z0.shape)} and "
                f"{tuple(z1.shape)}"
            )
        n = z0.shape[0]
        if n < 2:
            raise MedliteError("NT-Xent needs at least 2 images per batch (there are no negatives otherwise)")
        # float32 even under autocast: the logits go through exp() and bf16 loses the small differences.
        z = F.normalize(torch.cat([z0, z1]).float(), dim=1)
        logits = z @ z.T / self.temperature
        # An embedding is never its own negative: drop the diagonal from every softmax.
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, positives)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
