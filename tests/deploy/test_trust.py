"""Every prediction carries a status and calibrated probabilities: run directories and exported ONNX alike."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data

from medlite.deploy import predict
from medlite.deploy.classifiers import TorchClassifier
from medlite.metrics.calibration import Calibrator


@pytest.fixture(scope="module")
def unusual(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images that are not chest X-rays: a colour photo, a blank page, gray photos and a text page."""
    out = tmp_path_factory.mktemp("not-xrays")
    cv2.imwrite(str(out / "astronaut.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / "blank.png"), np.full((256, 256), 128, np.uint8))
    cv2.imwrite(str(out / "camera.png"), skimage.data.camera())
    page = np.full((300, 240), 255, np.uint8)
    cv2.putText(page, "Patient report", (10, 100), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 0, 2)
    cv2.imwrite(str(out / "text.png"), page)
    return out


def test_photos_are_rejected_or_flagged_and_abstain_withholds_the_class(trained_run: tuple[Path, Any],
                                                                        unusual: Path) -> None:
    run, _ = trained_run
    with pytest.warns(UserWarning):
        rows = {Path(r["file"]).name: r for r in predict(run, unusual)}
    assert rows["astronaut.png"]["status"].startswith("rejected: colour photograph")
    assert rows["blank.png"]["status"].startswith("rejected: nearly constant image")
    for name in ("astronaut.png", "blank.png"):
        assert rows[name]["predicted"] is None and rows[name]["ood_score"] is None
    threshold = json.loads((run / "run.json").read_text())["ood_gate"]["threshold"]
    for name in ("camera.png", "text.png"):
        row = rows[name]
        assert row["status"].startswith("flagged: unlike the training data") and row["ood_score"] > threshold
        assert row["predicted"] is not None  # warn: the class stays, with the flag
    with pytest.warns(UserWarning):
        abstained = {Path(r["file"]).name: r for r in predict(run, unusual, ood_policy="abstain")}
    assert abstained["camera.png"]["predicted"] is None and abstained["camera.png"]["prob_Normal"] is not None


def test_its_own_kind_of_image_passes_and_probabilities_are_the_calibrated_ones(trained_run: tuple[Path, Any],
                                                                              tmp_path: Path) -> None:
    from medlite.data.synthetic import write_phantom_dataset

    run, _ = trained_run
    phantoms = write_phantom_dataset(tmp_path / "ph", classes="chestx6", per_class=3, size=48, seed=9)
    folders = [p for p in sorted(phantoms.iterdir()) if p.is_dir() and p.name != "masks"]
    rows = predict(run, folders, out=tmp_path / "p.json")
    assert len(rows) == 18
    assert sum(r["status"] == "ok" for r in rows) >= 0.8 * len(rows), [r["status"] for r in rows]
    classifier = TorchClassifier(run)
    info = json.loads((run / "run.json").read_text())
    calibrator = Calibrator.from_dict(info["calibration"])
    assert calibrator.method == "temperature" and calibrator.temperature != pytest.approx(1.0, abs=1e-6)
    from medlite.data.imageio import read_image
    from medlite.data.preprocess import PreprocessConfig, preprocess_image

    cfg = PreprocessConfig.from_stored(info["preprocess"])
    u8 = np.stack([preprocess_image(read_image(r["file"]), cfg) for r in rows[:4]])
    logits, _ = classifier.logits_and_pooled(u8)
    expected = calibrator.apply(logits)
    got = np.asarray([[r[f"prob_{c}"] for c in info["classes"]] for r in rows[:4]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    payload = json.loads((tmp_path / "p.json").read_text())
    assert payload["calibration"] == info["calibration"] and payload["ood_gate"]["method"] == "mahalanobis"
    assert payload["n_flagged"] == sum(r["status"].startswith("flagged") for r in rows)


def test_the_onnx_export_carries_the_same_calibration_and_gate(trained_run: tuple[Path, Any], unusual: Path,
                                                               tmp_path: Path) -> None:
    from medlite.deploy import export_run

    run, _ = trained_run
    export_run(run, out=tmp_path / "export")
    assert (tmp_path / "export" / "ood_gate.safetensors").is_file()
    with pytest.warns(UserWarning):
        eager = predict(run, unusual)
    with pytest.warns(UserWarning):
        onnx = predict(tmp_path / "export" / "model.onnx", unusual)
    assert [r["status"].split(" (")[0] for r in onnx] == [r["status"].split(" (")[0] for r in eager]
    for a, b in zip(eager, onnx, strict=True):
        if a["ood_score"] is not None:
            assert b["ood_score"] == pytest.approx(a["ood_score"], rel=1e-3)


def test_the_int8_model_gets_a_threshold_of_its_own(trained_run: tuple[Path, Any], tmp_path: Path) -> None:
    """int8 rounding moves the pooled features: its threshold is the 99th percentile of its own validation
    scores, in a gate file of its own, while the fp32 model keeps the run's."""
    from medlite.data.prepared import prepare_data
    from medlite.deploy import export_run
    from medlite.deploy.classifiers import OnnxClassifier
    from medlite.rundir.store import load_run_model

    run, _ = trained_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int8 parity of this tiny model may miss its target; not the point here
        report = export_run(run, int8=True, out=tmp_path / "export")
    refit = report["int8"]["ood_gate"]
    assert (tmp_path / "export" / "ood_gate.int8.safetensors").is_file()
    fp32, int8 = OnnxClassifier(tmp_path / "export" / "model.onnx"), OnnxClassifier(tmp_path / "export" /
                                                                                    "model.int8.onnx")
    run_threshold = json.loads((run / "run.json").read_text())["ood_gate"]["threshold"]
    assert fp32.trust.gate.threshold == pytest.approx(run_threshold)
    assert int8.trust.gate.threshold == pytest.approx(refit["threshold"])
    assert int8.contract["ood_gate"]["file"] == "ood_gate.int8.safetensors"
    _, cfg, _ = load_run_model(run)
    data = prepare_data(cfg, manifest=run / "splits.csv", progress=False)
    val = np.ascontiguousarray(data.cached.images[data.indices(refit["split"], labelled_only=False)])
    logits, pooled = int8.logits_and_pooled(val)
    scores = int8.trust.gate.score(features=pooled, logits=logits)
    assert refit["threshold"] == pytest.approx(np.quantile(scores, 0.99))  # the int8 model's own scores
    assert refit["threshold_fp32"] == pytest.approx(run_threshold) and refit["n"] == len(val)
