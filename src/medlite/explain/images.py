"""``explain_images``: saliency overlays, raw maps and comparison grids for image files and trained runs.

The function behind ``medlite explain RUNDIR... IMAGES...``. Each image is read as the run's data was
(:func:`~medlite.data.imageio.read_image`, then the run's stored preprocessing), explained on the model input,
and the map is put back on the original image geometry before it is written.

Output layout (``OUT`` = ``out``)::

    OUT/<image stem>/<run>_<method>.png   overlay at the original size (windowed grayscale + colormap)
    OUT/<image stem>/<run>_<method>.npy   float32 (H, W) map in [0, 1] at the original size
    OUT/<image stem>/grid.png             rows = runs, columns = input + methods
    OUT/explanations.json                 one record per image x run x method (target, probability, paths)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from medlite.data.files import image_files
from medlite.data.imageio import read_image
from medlite.data.preprocess import PreprocessConfig, preprocess_image
from medlite.errors import MedliteError
from medlite.explain.grid import Panel, save_grid
from medlite.explain.methods import check_methods, create_explainer, resolve_class
from medlite.explain.overlay import overlay, save_png, to_original_geometry, window
from medlite.models.inputs import uint8_to_input
from medlite.rundir import store
from medlite.utils import atomic

_GRID_SIDE = 384  # longest side of a grid cell image; overlays of large X-rays are downscaled for the grid


def _unique(names: Sequence[str]) -> list[str]:
    """Names made unique by suffixing ``-2``, ``-3`` ... to repeats (two runs or images with one name)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    scale = _GRID_SIDE / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_write(path, "wb") as handle:
        np.save(handle, array)


def explain_images(
    run_dirs: str | Path | Sequence[str | Path],
    images: str | Path | Sequence[str | Path],
    methods: str | Sequence[str] = ("gradcam",),
    target: int | str | None = None,
    out: str | Path = "explanations",
    layer: str | None = None,
    batch_size: int = 32,
    *,
    colormap: str = "jet",
    alpha: float = 0.45,
    on_step: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Explain image files with one or more trained runs and write overlays, maps and grids.

    Args:
        run_dirs: one or several finished run directories (several = one grid row per model).
        images: image files (PNG/JPEG/DICOM/...) or folders of them, any size; each is preprocessed with each
            run's stored settings.
        methods: any of ``gradcam``, ``scorecam``, ``lime``.
        target: class to explain for every image (index, class name or numeric string); ``None`` = the class
            each model predicts.
        out: output folder (created).
        layer: dotted layer name for the CAM methods; ``None`` = each model's ``cfg.cam_layer``.
        batch_size: images per Grad-CAM batch, and masked inputs / LIME samples per forward pass.
        colormap: matplotlib colormap of the overlays.
        alpha: heatmap weight of the overlays in [0, 1].
        on_step: called with a line before each method x model x batch of images (LIME and Score-CAM take
            seconds per image on a CPU).

    Returns:
        One dict per image x run x method: ``image``, ``run``, ``model``, ``method``, ``layer``, ``target``,
        ``target_name``, ``probability``, ``overlay``, ``map``, ``grid`` (paths as strings). Also written to
        ``OUT/explanations.json``.
    """
    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    if not runs:
        raise MedliteError("run_dirs: give at least one run directory")
    if batch_size < 1:
        raise MedliteError(f"batch_size: must be >= 1, got {batch_size}")
    method_names = check_methods(methods)
    files = image_files(images)
    out = Path(out)
    run_labels = _unique([r.resolve().name for r in runs])
    folders = [out / stem for stem in _unique([f.stem for f in files])]
    loaded = []
    for run in runs:
        model, _cfg, info = store.load_run_model(run)
        classes = list(info["classes"])
        loaded.append((run, model, info, PreprocessConfig.from_stored(info["preprocess"]), classes,
                       resolve_class(target, classes)))
    windows = sorted({pre.dicom_window for _, _, _, pre, _, _ in loaded})
    results: list[dict[str, Any]] = []
    # Images are processed batch_size at a time, so memory stays bounded however many (large) files are given.
    for start in range(0, len(files), batch_size):
        chunk = range(start, min(start + batch_size, len(files)))
        # Each run sees (and overlays on) the file windowed its own way; runs sharing a window share the read.
        read = {(i, w): read_image(files[i], dicom_window=w) for i in chunk for w in windows}
        panels: dict[int, dict[str, list[Panel]]] = {i: {} for i in chunk}
        for (run, model, info, pre, classes, class_index), run_label in zip(loaded, run_labels, strict=True):
            originals = {i: read[i, pre.dicom_window] for i in chunk}
            u8 = torch.from_numpy(np.stack([preprocess_image(originals[i], pre) for i in chunk]))
            x = uint8_to_input(u8, float(info["mean"]), float(info["std"]), int(info["in_chans"]))
            for method in method_names:
                if on_step is not None:
                    on_step(f"{method} with {run_label}: images {chunk.start + 1}-{chunk.stop} of {len(files)}")
                with create_explainer(method, model, layer=layer, batch_size=batch_size) as explainer:
                    result = explainer(x, target=class_index)
                for j, i in enumerate(chunk):
                    sal = to_original_geometry(result.maps[j].cpu().numpy(), originals[i].shape, pre.resize)
                    stem = f"{run_label}_{method}"
                    _save_npy(folders[i] / f"{stem}.npy", sal)
                    rgb = overlay(originals[i], sal, colormap, alpha)
                    save_png(folders[i] / f"{stem}.png", rgb)
                    t = int(result.targets[j])
                    name = classes[t] if t < len(classes) else str(t)
                    prob = float(result.probs[j])
                    panels[i].setdefault(run_label, []).append(Panel(_thumbnail(rgb), f"{name} p={prob:.2f}"))
                    results.append({
                        "image": str(files[i]), "run": str(run), "model": info["model"], "method": method,
                        "layer": result.layer, "target": t, "target_name": name, "probability": prob,
                        "overlay": str(folders[i] / f"{stem}.png"), "map": str(folders[i] / f"{stem}.npy"),
                        "grid": str(folders[i] / "grid.png"),
                    })
        for i in chunk:
            base = _thumbnail(np.round(window(read[i, loaded[0][3].dicom_window]) * 255.0).astype(np.uint8))
            rows = [(label, panels[i][label]) for label in run_labels]
            title = files[i].name if target is None else f"{files[i].name} (target {target})"
            save_grid(folders[i] / "grid.png", base, rows, method_names, title=title)
    atomic.write_json(out / "explanations.json", results)
    return results
