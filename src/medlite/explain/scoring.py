"""``evaluate_explanations``: faithfulness and localisation of saliency methods for one trained run.

The function behind ``medlite explain RUNDIR --evaluate``. For ``n`` images it computes, per method:

* deletion AUC (lower = better) and insertion AUC (higher = better), :mod:`medlite.explain.metrics.faithfulness`;
* the ROAD combined score (higher = better), :mod:`medlite.explain.metrics.road`;
* where lesion masks exist (phantoms always have them; ``masks=DIR`` supplies them for other data), the
  pointing-game hit rate and the energy-in-mask share, :mod:`medlite.explain.metrics.localisation`.

**Same images for every model**: candidates are the run's test split (its own data) or every image of
``data``; the ``n`` kept are those whose record names have the smallest SHA-1 hashes, an order that depends
only on the names, so two runs evaluated on the same source (and, for their own data, the same split) see
exactly the same images. Their names are stored in ``explain_metrics.json``.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlite.config import RunConfig
from medlite.data.imageio import read_image
from medlite.data.prepared import PreparedData, prepare_data, prepare_other_source
from medlite.data.preprocess import PreprocessConfig, preprocess_mask
from medlite.data.records import Record, Source
from medlite.errors import DataError, MedliteError
from medlite.explain.methods import check_methods, create_explainer
from medlite.explain.metrics.faithfulness import curve_auc, deletion_insertion_curves, model_scorer
from medlite.explain.metrics.localisation import default_tolerance, energy_in_mask, pointing_game
from medlite.explain.metrics.road import ROAD_PERCENTILES, road_scores
from medlite.models.inputs import normalise_batch
from medlite.rundir import layout, store
from medlite.utils import atomic

EXPLAIN_METRICS = layout.EXPLAIN_METRICS
METRIC_GROUPS = ("deletion", "road", "localisation")


def select_images(keys: Sequence[str], n: int) -> np.ndarray:
    """Positions (sorted, int64) of the ``n`` keys with the smallest SHA-1 digests: a run-independent pick."""
    digests = [hashlib.sha1(k.encode()).hexdigest() for k in keys]
    order = sorted(range(len(keys)), key=digests.__getitem__)
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def _record_key(record: Record) -> str:
    return record.name or str(record.item)


def _masks_from_dir(folder: Path, records: Sequence[Record], source: Source, positions: np.ndarray,
                    pre: PreprocessConfig
                    ) -> np.ndarray:
    """uint8 (N, S, S) 0/1 masks from ``folder`` (same relative path as the image, or the same file name)."""
    out = np.zeros((len(records), pre.size, pre.size), np.uint8)
    found = 0
    for row, (record, position) in enumerate(zip(records, positions, strict=True)):
        rel = Path(record.name or str(record.item))
        candidates = [folder / rel, (folder / rel).with_suffix(".png"), folder / rel.name,
                      (folder / rel.name).with_suffix(".png")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            continue
        mask = read_image(path, dicom_window="none") > 0  # any non-zero stored value is lesion
        shape = source.read(int(position)).shape
        if mask.shape != shape:
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} pixels but its image is "
                            f"{shape[1]}x{shape[0]}")
        out[row] = preprocess_mask(mask, pre)
        found += 1
    if not found:
        warnings.warn(f"{folder}: no mask matched any of the {len(records)} images (looked for the images' "
                      "relative paths and file names)", UserWarning, stacklevel=3)
    return out


def _prepare(run_dir: Path, cfg: RunConfig, info: dict[str, Any], data: str | None
             ) -> tuple[PreparedData, np.ndarray, str]:
    """The prepared images to score, the candidate positions among them and a description."""
    if data is None:
        prepared = prepare_data(cfg, manifest=run_dir / layout.SPLITS, progress=False)
        split = prepared.eval_split
        return prepared, prepared.indices(split, labelled_only=False), f"{cfg.data.source} ({split} split)"
    prepared = prepare_other_source(cfg, data, info["classes"])
    return prepared, np.arange(len(prepared.cached.labels)), str(data)


def _stats(values: np.ndarray) -> dict[str, float | int | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(v.mean()), 5), "std": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 5),
            "n": int(v.size)}


def evaluate_explanations(
    run_dir: str | Path,
    data: str | None = None,
    n: int = 200,
    masks: str | Path | None = None,
    methods: str | Sequence[str] = ("gradcam", "scorecam"),
    out: str | Path | None = None,
    *,
    layer: str | None = None,
    target: str = "predicted",
    batch_size: int = 32,
    steps: int = 100,
    seed: int = 0,
    metrics: Sequence[str] = METRIC_GROUPS,
    method_options: dict[str, dict[str, Any]] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score saliency methods of a finished run and write ``explain_metrics.json``.

    Args:
        run_dir: a finished run directory.
        data: another source with the run's class names (folder, CSV, npz, ``synthetic``); default the run's
            own data, test split (validation split when the run has no test split).
        n: number of images (the same ones for every model, see the module docstring).
        masks: folder of lesion masks laid out like the data (relative path or file name of each image, any
            image format, non-zero = lesion); default the source's own masks when it has them.
        methods: any of ``gradcam``, ``scorecam``, ``lime``.
        out: folder for ``explain_metrics.json``; default ``run_dir`` (own data) or
            ``run_dir/explain-<data name>``.
        layer: dotted layer name for the CAM methods; ``None`` = the model cfg's ``cam_layer``.
        target: ``"predicted"`` (explain the predicted class) or ``"label"`` (the true class).
        batch_size: images per explainer call and perturbed inputs per forward pass.
        steps: deletion / insertion steps (``steps + 1`` points).
        seed: seed of LIME sampling and ROAD imputation noise.
        metrics: which groups to compute (a cost knob): ``deletion`` (deletion and insertion AUC), ``road``,
            ``localisation`` (pointing game and energy in mask; needs masks).
        method_options: extra constructor options per method, e.g. ``{"scorecam": {"max_channels": 64}}``.
        on_step: called with a line before each method and each metric group (each takes seconds to minutes).

    Returns:
        The metrics dict written to ``explain_metrics.json``: per method ``deletion_auc``,
        ``insertion_auc``, ``road_combined`` and (with masks) ``pointing_game`` and ``energy_in_mask``, each
        ``{"mean", "std", "n"}``, mean deletion / insertion curves and seconds; ``mask_area_fraction`` (the
        energy in mask of a uniform map, i.e. chance level); the settings; the image names.
    """
    if n < 1:
        raise MedliteError(f"n: must be >= 1, got {n}")
    if target not in ("predicted", "label"):
        raise MedliteError(f"target: must be 'predicted' or 'label', got {target!r}")
    method_names = check_methods(methods)
    unknown = sorted(set(metrics) - set(METRIC_GROUPS))
    if unknown or not metrics:
        raise MedliteError(f"metrics: {unknown or 'none'} given; choose from {', '.join(METRIC_GROUPS)}")
    run_dir = Path(run_dir)
    model, cfg, info = store.load_run_model(run_dir)
    pre = PreprocessConfig.from_stored(info["preprocess"])
    prepared, candidates, described = _prepare(run_dir, cfg, info, data)
    cached, source = prepared.cached, prepared.source
    records = [source.records[int(cached.record_indices[i])] for i in candidates]
    if len(candidates) < n:
        warnings.warn(f"{described}: only {len(candidates)} images available, fewer than n={n}", UserWarning,
                      stacklevel=2)
    chosen = candidates[select_images([_record_key(r) for r in records], n)]
    chosen_records = [source.records[int(cached.record_indices[i])] for i in chosen]
    images = torch.from_numpy(np.asarray(cached.images[chosen], dtype=np.float32) / 255.0)
    labels = torch.from_numpy(np.asarray(cached.labels[chosen], dtype=np.int64))
    if masks is not None:
        folder = Path(masks).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder}: masks folder not found")
        lesions = _masks_from_dir(folder, chosen_records, source, cached.record_indices[chosen], pre)
    else:
        lesions = np.asarray(cached.masks[chosen]) if cached.masks is not None else None
    has_mask = lesions.reshape(len(chosen), -1).any(1) if lesions is not None else np.zeros(len(chosen), bool)

    mean, std, in_chans = float(info["mean"]), float(info["std"]), int(info["in_chans"])
    scorer = model_scorer(model, mean, std, in_chans, batch_size=max(batch_size, 64))
    report: dict[str, Any] = {}
    step = on_step or (lambda text: None)
    for method in method_names:
        started = time.perf_counter()
        step(f"{method}: explaining {len(chosen)} images")
        options = dict((method_options or {}).get(method, {}))
        if method == "lime":
            options.setdefault("seed", seed)
        maps, targets = [], []
        with create_explainer(method, model, layer=layer, batch_size=batch_size, **options) as explainer:
            for part, part_labels in zip(images.split(batch_size), labels.split(batch_size), strict=True):
                x = normalise_batch(part[:, None], mean, std, in_chans)
                result = explainer(x, target=part_labels if target == "label" else None)
                maps.append(result.maps.cpu())
                targets.append(result.targets.cpu())
        sal, tgt = torch.cat(maps), torch.cat(targets)
        entry: dict[str, Any] = {"explain_seconds": round(time.perf_counter() - started, 2)}
        if "deletion" in metrics:
            step(f"{method}: deletion and insertion curves ({steps} steps)")
            deletion, insertion = deletion_insertion_curves(scorer, images, sal, tgt, steps=steps)
            entry["deletion_auc"] = _stats(curve_auc(deletion).numpy())
            entry["insertion_auc"] = _stats(curve_auc(insertion).numpy())
        if "road" in metrics:
            step(f"{method}: ROAD")
            road = road_scores(scorer, images, sal, tgt, seed=seed)
            entry["road_combined"] = _stats(road["combined"].numpy())
        if "localisation" in metrics and has_mask.any():
            sal_np, lesion_np = sal.numpy()[has_mask], lesions[has_mask]
            entry["pointing_game"] = _stats(pointing_game(sal_np, lesion_np).astype(np.float64))
            entry["energy_in_mask"] = _stats(energy_in_mask(sal_np, lesion_np))
        if "deletion" in metrics:
            entry["deletion_curve"] = [round(float(v), 4) for v in deletion.mean(0)]
            entry["insertion_curve"] = [round(float(v), 4) for v in insertion.mean(0)]
        entry["seconds"] = round(time.perf_counter() - started, 2)
        entry["layer"] = result.layer
        report[method] = entry

    metrics = {
        "run_dir": str(run_dir), "model": info["model"], "paradigm": info.get("paradigm"), "data": described,
        "n_images": int(len(chosen)), "n_with_mask": int(has_mask.sum()), "input_size": pre.size,
        # The energy in mask of a uniform map: the chance level energy_in_mask should be compared with.
        "mask_area_fraction": _stats(lesions[has_mask].reshape(int(has_mask.sum()), -1).mean(1))
        if has_mask.any() else None,
        "target": target,
        "metrics": list(metrics),
        "settings": {"deletion_fill": "image mean intensity", "steps": steps, "insertion_blur": [11, 5.0],
                     "probabilities": "softmax (sigmoid for one logit)",
                     "road_percentiles": list(ROAD_PERCENTILES), "road_noise": 0.01,
                     "pointing_tolerance_px": default_tolerance(pre.size), "seed": seed,
                     "method_options": method_options or {}},
        "methods": report,
        "images": [_record_key(r) for r in chosen_records],
    }
    if out is None:
        out = run_dir if data is None else layout.explain_dir(run_dir, data)
    target_dir = Path(out)
    atomic.write_json(target_dir / EXPLAIN_METRICS, metrics)
    return metrics
