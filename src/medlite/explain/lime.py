"""LIME on SLIC superpixels (Ribeiro, Singh, Guestrin, "Why Should I Trust You?", KDD 2016, arXiv:1602.04938),
computed by captum's ``Lime`` with superpixels from scikit-image's ``slic`` (Achanta et al., TPAMI 2012).

Per image: the input is cut into ``n_segments`` superpixels; ``n_samples`` random subsets of them are kept
(each superpixel on with probability 1/2) and the rest set to the baseline 0 in the model's normalised input
space, i.e. the model's mean intensity; a weighted ridge regression (``alpha=1``, as the reference ``lime``
package) of the class probability on the on/off pattern gives one coefficient per superpixel. Samples are
weighted as in ``lime``'s image explainer: ``sqrt(exp(-d^2 / w^2))`` with ``d`` the cosine distance
between the pattern and the all-on pattern and ``w = kernel_width`` (0.25).

The returned map keeps the positive coefficients (evidence *for* the class, like Grad-CAM's ReLU), constant
within each superpixel. Sampling is seeded (``seed``), so a call is reproducible, and the global torch RNG is
left untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from medlite.errors import MedliteError
from medlite.explain.explainer import Explainer, class_probs


def superpixels(image: np.ndarray, n_segments: int = 50, compactness: float = 0.1) -> np.ndarray:
    """SLIC superpixels of a grayscale image.

    Args:
        image: float (H, W) in any range (min-max scaled to [0, 1] first, so ``compactness`` means the same
            for every intensity convention).
        n_segments: approximate number of superpixels.
        compactness: balance of intensity against space (larger = squarer segments); ~0.1 suits [0, 1] images.

    Returns:
        int64 (H, W) labels 0..M-1.
    """
    from skimage.segmentation import slic

    img = np.asarray(image, dtype=np.float64)
    span = float(img.max() - img.min())
    img = (img - img.min()) / span if span > 0 else np.zeros_like(img)
    labels = slic(img, n_segments=n_segments, compactness=compactness, channel_axis=None, start_label=0)
    # slic may skip label values after enforcing connectivity; captum wants contiguous ids 0..M-1.
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def _lime_kernel(kernel_width: float) -> Callable[..., torch.Tensor]:
    """``lime``'s image-explainer sample weight: kernel of the cosine distance to the all-on sample."""

    def similarity(_original: torch.Tensor, _perturbed: torch.Tensor, interpretable: torch.Tensor,
                   **_kwargs: object) -> torch.Tensor:
        z = interpretable.float()
        on_fraction = z.sum() / z.numel()
        distance = 1.0 - on_fraction.sqrt()  # 1 - cos(z, 1) for a binary z
        return torch.exp(-(distance**2) / kernel_width**2).sqrt()

    return similarity


class LimeExplainer(Explainer):
    """LIME with SLIC superpixels; model-agnostic (no hooks, no gradients).

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)`` logits (K = 1 for a single-logit binary head).
        n_samples: perturbed inputs per image (forward passes).
        n_segments: approximate number of superpixels per image.
        compactness: SLIC compactness on the [0, 1]-scaled image.
        kernel_width: width of the sample-weighting kernel on the cosine distance.
        batch_size: perturbed inputs per forward pass.
        seed: seed of the random on/off patterns (image ``i`` of a batch uses ``seed + i``).
    """

    name = "lime"
    needs_gradients = False

    def __init__(self, model: nn.Module, *, n_samples: int = 200, n_segments: int = 50,
                 compactness: float = 0.1, kernel_width: float = 0.25, batch_size: int = 32,
                 seed: int = 0) -> None:
        super().__init__(model)
        for arg, value in (("n_samples", n_samples), ("n_segments", n_segments), ("batch_size", batch_size)):
            if value < 1:
                raise MedliteError(f"{arg}: must be >= 1, got {value}")
        if compactness <= 0 or kernel_width <= 0:
            raise MedliteError(f"compactness and kernel_width must be > 0, got {compactness}, {kernel_width}")
        self.n_samples = n_samples
        self.n_segments = n_segments
        self.compactness = compactness
        self.kernel_width = kernel_width
        self.batch_size = batch_size
        self.seed = seed

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        return class_probs(self.model(x).float())

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import Lime

        lime = Lime(self._probs, interpretable_model=SkLearnRidge(alpha=1.0),
                    similarity_func=_lime_kernel(self.kernel_width))
        maps = []
        for i in range(x.shape[0]):
            segments = superpixels(x[i, 0].cpu().numpy(), self.n_segments, self.compactness)
            feature_mask = torch.from_numpy(segments).to(x.device)[None, None].expand_as(x[i : i + 1])
            # captum draws the on/off patterns from the global torch RNG; fork it to stay reproducible.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + i)
                attr = lime.attribute(x[i : i + 1], target=int(targets[i]), baselines=0.0,
                                      feature_mask=feature_mask, n_samples=self.n_samples,
                                      perturbations_per_eval=self.batch_size)
            maps.append(attr[0].mean(0).clamp_min(0.0))
        return torch.stack(maps).float()
