"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, arXiv:1610.02391), computed by captum's ``LayerGradCam``.

For the explained class c with pre-softmax score y^c and layer activations A^k (k = channels):
``alpha_k = mean_ij dy^c / dA^k_ij`` and ``L^c = ReLU(sum_k alpha_k A^k)``, upsampled bilinearly to the input
and min-max normalised (the ReLU, upsampling and normalisation are done by :class:`CAMExplainer`).

captum stores a clone of the layer output and differentiates with ``torch.autograd.grad`` with respect to
it, so an in-place ReLU after the layer is harmless, and the layer output is made to require gradients, so a
frozen backbone (``requires_grad=False`` everywhere) is explained as well.
"""

from __future__ import annotations

import torch
from torch import nn

from medlite.explain.explainer import CAMExplainer, class_scores


class GradCAM(CAMExplainer):
    """Grad-CAM on one layer of a classifier.

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)`` logits (K = 1 for a single-logit binary head).
        layer: dotted layer name; ``None`` uses ``model.cfg.cam_layer``.

    Example:
        >>> with GradCAM(model) as cam:
        ...     maps = cam(x).maps  # (B, H, W) in [0, 1], predicted class
    """

    name = "gradcam"
    needs_gradients = True

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__(model, layer)

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        return class_scores(self.model(x))

    def _layer_cam(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from captum.attr import LayerGradCam

        with self.spatial_module() as module:
            cam = LayerGradCam(self._scores, module).attribute(x, target=targets, relu_attributions=False)
        return cam[:, 0]
