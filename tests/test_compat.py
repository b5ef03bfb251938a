"""What a user of the previous release relies on keeps working: old import paths (deprecated aliases, one
release) and run directories written by medlite 0.1 (a tiny committed fixture: hybridnet_xr_50 at 32 px on
``synthetic:binary`` phantoms, trained by the code before the layer refactor)."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import medlite

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"

OLD_PATHS = {
    "medlite.training": ("train", "prepare_data", "PreparedData", "resolve_init"),
    "medlite.utils.rundir": ("CONFIG", "WEIGHTS", "atomic_write", "write_json", "require_run_dir"),
    "medlite.models.adapt": ("load_checkpoint", "save_weights", "load_weights"),
    "medlite.paradigms.base": ("ClassifierTask",),
    "medlite.explain.api": ("explain_images", "create_explainer", "METHODS"),
    "medlite.explain.base": ("Explainer", "CAMExplainer"),
    "medlite.explain.evaluate": ("evaluate_explanations",),
    "medlite.explain.faithfulness": ("deletion_insertion_curves",),
    "medlite.explain.road": ("road_scores",),
    "medlite.explain.localisation": ("pointing_game",),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_import_paths_warn_and_still_work(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to"):
        module = importlib.import_module(old)
    for name in OLD_PATHS[old]:
        assert hasattr(module, name), f"{old}.{name}"


def test_top_level_evaluate_is_the_function(tmp_path):
    import inspect

    assert inspect.isfunction(medlite.evaluate) and medlite.evaluate is medlite.evaluate_run
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    metrics = medlite.evaluate(run)
    assert metrics["n"] == json.loads((FIXTURE / "metrics.json").read_text())["n"]


@pytest.fixture()
def old_run(tmp_path):
    return shutil.copytree(FIXTURE, tmp_path / "old-run")


def test_a_run_written_by_the_previous_release_evaluates_to_its_own_numbers(old_run):
    stored = json.loads((FIXTURE / "metrics.json").read_text())
    metrics = medlite.evaluate(old_run)
    for key in ("n", "accuracy", "balanced_accuracy"):
        assert metrics[key] == pytest.approx(stored[key]), key
    assert metrics["auc_macro"] == pytest.approx(stored["auc_macro"], abs=1e-6)


def test_a_run_written_by_the_previous_release_exports_and_predicts(old_run, tmp_path):
    report = medlite.export(old_run)
    assert report["fp32"]["passed"]
    image = tmp_path / "scan.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), (rng.random((48, 40)) * 255).astype(np.uint8))
    for model in (old_run, old_run / "export" / "model.onnx"):
        rows = medlite.predict(model, [image])
        assert rows[0]["status"] == "ok" and rows[0]["predicted"] in ("normal", "pneumonia")
        assert sum(v for k, v in rows[0].items() if k.startswith("prob_")) == pytest.approx(1.0, abs=1e-5)
