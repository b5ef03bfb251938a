"""What an exported graph returns besides logits, and whether a class activation map can be computed from it.

:class:`ExportGraph` wraps a zoo model for export so that one forward pass returns three tensors (the names of
:data:`medlite.deploy.contract.OUTPUT_NAMES`):

* ``logits`` (B, K): the model's output, as before (K = 1 for a single-logit binary head);
* ``pooled`` (B, D): ``forward_head(map, pre_logits=True)``, the features the final classifier reads (the
  representation the out-of-distribution checks use);
* ``cam_features`` (B, C, h, w): the output of the registry's ``cam_layer`` (ViT token layers folded to their
  patch grid, as the explainers do).

:func:`cam_head` decides, on real inputs, whether the head is *global-average-pool + linear*: the pooled
features are the spatial mean of ``cam_features`` and the logits are ``pooled @ W.T + b``. Then the class
activation map ``CAM_c = sum_k W[c, k] A_k`` (Zhou et al., CVPR 2016) equals Grad-CAM on that layer up to a
positive factor (dy_c / dA_kij = W[c, k] / (h w)), so a deployment can draw it in NumPy from ``cam_features``
and the weights stored in the contract (:mod:`medlite.deploy.cam`). Heads that fail the test (a feature-mix
layer after the pool, fully connected blocks, a ReLU between classifier and pool, a class token) get the
reason instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medlite.models.spatial import to_spatial

# Relative tolerances of the head test: fp32 sums over up to ~2k channels agree to ~1e-6; a real non-linearity
# (ReLU, feature mix, FC blocks) is off by order 1.
_POOL_RTOL = 1e-4
_LINEAR_RTOL = 1e-4


class ExportGraph(nn.Module):
    """``x -> (logits, pooled, cam_features)`` of a zoo model from one backbone pass.

    Args:
        model: a zoo model (``forward_features``, ``forward_head``, ``cfg.cam_layer``), in eval mode.
        probe: one float input batch (B, in_chans, S, S) at the export size, run once to see whether the CAM
            layer's output is the backbone's output.

    Shapes:
        (B, in_chans, S, S) -> (B, K), (B, D), (B, C, h, w).
    """

    def __init__(self, model: nn.Module, probe: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # torch.export follows the wrapper's own mode (a fresh module trains)
        self.cam_layer = model.cfg.cam_layer
        self._layer = model.get_submodule(self.cam_layer)
        self._captured: list[Any] = []
        # When the CAM layer's output *is* the backbone output (every CNN, ViT with average pooling) no hook is
        # needed; a hook is registered only for other layers (a ViT class-token model's last block).
        self.hooked = not self._is_backbone_output(probe)

    def _is_backbone_output(self, probe: torch.Tensor) -> bool:
        seen: list[Any] = []
        handle = self._layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            with torch.no_grad():
                out = self.model.forward_features(probe[:1])
        finally:
            handle.remove()
        return bool(seen) and seen[-1] is out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.hooked:
            fmap = self.model.forward_features(x)
            cam = fmap
        else:
            self._captured.clear()
            handle = self._layer.register_forward_hook(lambda _m, _i, out: self._captured.append(out))
            try:
                fmap = self.model.forward_features(x)
            finally:
                handle.remove()
            cam = to_spatial(self._captured[-1], self.cam_layer, (int(x.shape[2]), int(x.shape[3])))
            self._captured.clear()
        return self.model.forward_head(fmap), self.model.forward_head(fmap, pre_logits=True), cam


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    scale = float(b.abs().max()) or 1.0
    return a.shape == b.shape and float((a - b).abs().max()) <= rtol * scale


def cam_head(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The CAM description stored in an exported model's contract (``contract["cam"]``).

    Args:
        model: an eval-mode zoo model.
        x: float32 (B, in_chans, S, S) normalised inputs to test the head on (real images: the parity batch).

    Returns:
        ``layer`` (the CAM layer's dotted name), ``available`` (bool) and either ``weights`` (K x C nested lists,
        float32 values), ``bias`` (K values) and ``single_logit`` (K == 1: class 0 is explained by ``-W``), or
        ``reason`` (one sentence saying why no CAM can be drawn from the exported outputs).
    """
    graph = ExportGraph(model, x)
    name = model.cfg.name
    out: dict[str, Any] = {"layer": graph.cam_layer, "method": "cam (global-average-pool + linear head)"}
    with torch.inference_mode():
        logits, pooled, cam = (t.float() for t in graph(x))
    head = model.get_classifier()
    linear = isinstance(head, nn.Linear) or (isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1))
    reason = None
    if graph.hooked or not _close(cam.mean((2, 3)), pooled, _POOL_RTOL):
        reason = (f"{name}: the classifier does not read the spatial average of the CAM layer "
                  f"{graph.cam_layer!r} (a feature-mix layer, fully connected blocks or a class token sit in "
                  "between), so no class activation map follows from the exported outputs")
    elif not linear:
        reason = f"{name}: the final layer is not linear, so no class activation map follows from its weights"
    else:
        weight = head.weight.detach().float().reshape(head.weight.shape[0], -1)
        bias = head.bias.detach().float() if head.bias is not None else torch.zeros(weight.shape[0])
        if not _close(pooled @ weight.T + bias, logits, _LINEAR_RTOL):
            reason = (f"{name}: the logits are not a linear function of the pooled features (e.g. SqueezeNet's "
                      "ReLU'd head), so no class activation map follows from the classifier weights")
    if reason is not None:
        return {**out, "available": False, "reason": reason}
    return {**out, "available": True, "weights": weight.tolist(), "bias": bias.tolist(),
            "single_logit": int(weight.shape[0]) == 1}
