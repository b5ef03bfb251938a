"""``medlite evaluate RUNDIR --ood SOURCE...``: how well a run's OOD gate tells other images from its own.

Each SOURCE (a folder of images in any layout, a CSV, an npz or ``synthetic:<set>``; labels ignored) is treated
as out-of-distribution and scored against the run's own evaluation split (test, else validation), with the
run's preprocessing. Per source: AUROC (OOD = positive) and FPR at 95 % TPR of the gate's score, and the share
flagged at the run's threshold. In-distribution: the share flagged (false refusals) and the accuracy of the
kept images when the flagged ones are withheld, with the whole risk-coverage curve plotted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlite.data.prepared import prepare_data
from medlite.data.records import SPLIT_NAMES
from medlite.data.unlabelled import load_unlabelled
from medlite.errors import MedliteError
from medlite.metrics.ood import (
    fpr_at_tpr,
    ood_auroc,
    plot_risk_coverage,
    plot_score_histograms,
    risk_coverage,
    selective_accuracy,
)
from medlite.rundir import layout, store
from medlite.utils import atomic
from medlite.workflows.trust import features_logits, run_calibrator, run_gate


def _names(sources: Sequence[str | Path]) -> list[str]:
    """A short, unique display name per source: the folder or file name (``synthetic:x`` as given)."""
    names: list[str] = []
    for spec in sources:
        path = Path(spec)
        # "covid-qu-ex/train", not "train": a split folder is named with the set it belongs to
        base = str(spec) if str(spec).startswith("synthetic") else \
            f"{path.parent.name}/{path.name}" if path.name.lower() in SPLIT_NAMES else path.name or str(spec)
        name, n = base, 2
        while name in names:
            name, n = f"{base} ({n})", n + 1
        names.append(name)
    return names


def evaluate_ood(run_dir: str | Path, sources: Sequence[str | Path], *, out: str | Path | None = None,
                 batch_size: int = 128) -> dict[str, Any]:
    """Score ``sources`` as out-of-distribution for the run's gate; write ``metrics.json`` and two plots.

    Returns:
        ``{"split", "threshold", "method", "in_distribution": {n, flagged, coverage, accuracy_kept,
        accuracy_all, n_kept}, "ood": {name: {source, n, auroc, fpr_at_95_tpr, flagged}}}``, written to
        ``out`` (default ``RUNDIR/eval-ood``) with ``plots/ood_scores.png`` and ``plots/risk_coverage.png``;
        the returned dict also holds ``"out"``, that folder.

    Raises:
        MedliteError: no sources, a run without a gate (trained before medlite had one: ``medlite calibrate``),
            or a source that cannot be read (named).
    """
    if not sources:
        raise MedliteError("--ood: give at least one source of images unlike the run's data")
    model, cfg, info = store.load_run_model(run_dir)
    run_dir = Path(run_dir)
    gate = run_gate(run_dir, info)
    if gate is None:
        raise MedliteError(f"{run_dir}: has no OOD gate (trained before medlite had one); "
                           f"run: medlite calibrate {run_dir}")
    calibrator = run_calibrator(info)
    data = prepare_data(cfg, manifest=run_dir / layout.SPLITS, progress=False)
    split = data.eval_split
    idx = data.indices(split, labelled_only=False)
    embed = dict(mean=model.cfg.mean, std=model.cfg.std, in_chans=info["in_chans"], batch_size=batch_size)
    with torch.inference_mode():
        feats, logits = features_logits(model, data.cached.images[idx], **embed)
        in_scores = gate.score(features=feats, logits=logits)
        correct = calibrator.apply(logits).argmax(1) == np.asarray(data.cached.labels[idx])
        ood: dict[str, dict[str, Any]] = {}
        ood_scores: dict[str, np.ndarray] = {}
        for name, spec in zip(_names(sources), sources, strict=True):
            images, use = load_unlabelled(spec, cfg, option="--ood", every_split=True)
            f, z = features_logits(model, images[use], **embed)
            scores = ood_scores[name] = gate.score(features=f, logits=z)
            ood[name] = {"source": str(spec), "n": int(scores.size), "auroc": ood_auroc(in_scores, scores),
                         "fpr_at_95_tpr": fpr_at_tpr(in_scores, scores), "flagged": float(gate.flag(scores).mean())}
    target = Path(out) if out else run_dir / layout.OOD_EVAL_DIR
    kept = selective_accuracy(correct, in_scores, gate.threshold)
    result = {"split": split, "method": gate.method, "threshold": gate.threshold,
              "in_distribution": {"n": int(in_scores.size), "flagged": float(gate.flag(in_scores).mean()), **kept},
              "ood": ood}
    plot_score_histograms(in_scores, ood_scores, target / layout.PLOTS / "ood_scores.png", threshold=gate.threshold,
                          title=f"{gate.method} scores: {split} split vs --ood sources")
    plot_risk_coverage({f"{split} split": risk_coverage(correct, in_scores)},
                       target / layout.PLOTS / "risk_coverage.png",
                       title=f"{split} split: error of kept images, most unusual withheld first "
                             f"(threshold keeps {kept['coverage']:.1%})")
    atomic.write_json(target / layout.METRICS, result)
    return {**result, "out": target}
