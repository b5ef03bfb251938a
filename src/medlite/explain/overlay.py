"""Saliency overlays at the original image geometry: the functions live in :mod:`medlite.data.display`
(torch-free, shared with the ONNX heatmaps); this module keeps the explain-side import path."""

from medlite.data.display import RESIZE_MODES, colorize, overlay, save_png, to_original_geometry, window

__all__ = ["RESIZE_MODES", "colorize", "overlay", "save_png", "to_original_geometry", "window"]
