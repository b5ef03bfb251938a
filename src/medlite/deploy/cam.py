"""Class activation maps of an exported model in NumPy, without torch: ``cam_features`` x classifier weights.

An export since the ``cam_features`` output (:mod:`medlite.deploy.graph_outputs`) stores, for a model whose
head is global-average-pool + linear, the classifier weights ``W`` (K x C) in its contract (``contract["cam"]``).
For the explained class c and the CAM layer's map ``A`` (C, h, w)::

    cam_c = ReLU(sum_k W[c, k] A_k)      (h, w); class 0 of a single-logit head uses -W[0] (scores (-z, z))
    upsampled bilinearly to S x S (OpenCV, half-pixel centres = torch's align_corners=False)
    min-max normalised to [0, 1]          (a map with no positive evidence is all zeros)

That is Grad-CAM on the same layer up to a positive factor (the gradient of a GAP + linear head is
``W[c] / (h w)`` at every position), in the order of :class:`medlite.explain.explainer.CAMExplainer`: ReLU,
upsampling, normalisation. Models whose head is anything else have ``contract["cam"]["reason"]`` instead, and
:func:`cam_unavailable` returns it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlite.data.display import overlay, save_png, to_original_geometry
from medlite.errors import ModelError
from medlite.utils.atomic import atomic_write


def cam_unavailable(contract: dict[str, Any]) -> str | None:
    """``None`` when the exported model can draw class activation maps, else the one-line reason why not."""
    cam = contract.get("cam")
    if cam is None:
        return (f"{contract.get('model', 'this model')}: exported without the cam_features output (an older "
                "medlite); export the run again with `medlite export` to get heatmaps")
    if not cam.get("available"):
        return str(cam.get("reason") or "the model's head allows no class activation map")
    return None


def _class_weights(cam: dict[str, Any], targets: np.ndarray) -> np.ndarray:
    """float32 (B, C) weight vectors of the explained classes (B,) in probability space (0..max(K, 2) - 1)."""
    weight = np.asarray(cam["weights"], dtype=np.float32)
    if cam.get("single_logit"):
        weight = np.concatenate([-weight, weight])  # scores (-z, z): class 0 is the negated logit
    if (targets < 0).any() or (targets >= len(weight)).any():
        raise ModelError(f"CAM target {targets.tolist()} out of range; the model has classes 0..{len(weight) - 1}")
    return weight[targets]


def normalise_map(cam: np.ndarray) -> np.ndarray:
    """Min-max normalise one (H, W) map to float32 [0, 1]; non-finite values become 0, a flat map all zeros."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(cam.min()), float(cam.max())
    span = hi - lo
    if span <= 1e-12 * max(abs(hi), 1.0):
        return np.zeros(cam.shape, np.float32)
    return ((cam - lo) / span).astype(np.float32)


def class_activation_maps(cam_features: np.ndarray, contract: dict[str, Any], targets: np.ndarray | list[int],
                          size: int | None = None) -> np.ndarray:
    """CAMs of ``targets`` on the model input.

    Args:
        cam_features: float (B, C, h, w), the exported ``cam_features`` output.
        contract: the exported model's contract (``cam`` entry with weights, ``input_size``).
        targets: (B,) class index per image, in probability space (a single-logit head has classes 0 and 1).
        size: output side in pixels; default the model input size ``S``.

    Returns:
        float32 (B, size, size) maps, each in [0, 1].

    Raises:
        ModelError: the model has no CAM (:func:`cam_unavailable` says why) or the shapes do not match.
    """
    reason = cam_unavailable(contract)
    if reason is not None:
        raise ModelError(reason)
    features = np.asarray(cam_features, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    weights = _class_weights(contract["cam"], targets)
    if features.ndim != 4 or features.shape[0] != len(targets) or features.shape[1] != weights.shape[1]:
        raise ModelError(f"cam_features of shape {features.shape} do not fit {len(targets)} targets and "
                         f"{weights.shape[1]} classifier inputs")
    side = int(size or contract["input_size"])
    low = np.maximum(np.einsum("bchw,bc->bhw", features, weights), 0.0)
    out = np.empty((len(targets), side, side), np.float32)
    for i, cam in enumerate(low):
        out[i] = normalise_map(cv2.resize(cam, (side, side), interpolation=cv2.INTER_LINEAR))
    return out


# ----------------------------------------------------------------------------------------------- files
def unique_stems(names: list[str]) -> list[str]:
    """Names made unique by suffixing ``-2``, ``-3`` ... to repeats (two images with one file name)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def write_cam(folder: Path, label: str, original: np.ndarray, cam: np.ndarray, resize: str,
              alpha: float = 0.45) -> tuple[Path, Path]:
    """Write ``FOLDER/LABEL.png`` (overlay on the windowed original) and ``FOLDER/LABEL.npy`` (float32 (H, W)
    map in [0, 1] at the original geometry), atomically, the layout of ``medlite explain``.

    Args:
        folder: output folder of one image (created).
        label: file stem, e.g. ``"model_cam"``.
        original: float (H, W) image as read (:func:`medlite.data.imageio.read_image`).
        cam: float (S, S) map on the model input (:func:`class_activation_maps`).
        resize: the contract's ``preprocess.resize`` mode (how the input was made from the original).
        alpha: heatmap weight of the overlay.
    """
    sal = to_original_geometry(cam, original.shape, resize)
    npy = folder / f"{label}.npy"
    with atomic_write(npy, "wb") as handle:
        np.save(handle, sal)
    return save_png(folder / f"{label}.png", overlay(original, sal, alpha=alpha)), npy
