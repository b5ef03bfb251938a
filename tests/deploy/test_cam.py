"""Tests for medlite.deploy.cam: the torch-free ONNX class activation map equals Grad-CAM at the same layer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from medlite.deploy.cam import cam_unavailable, class_activation_maps
from medlite.deploy.onnx_export import EXPORT_DIR, ONNX_FILE
from medlite.errors import MedliteError, ModelError
from medlite.models import list_models

# Heads that are not global-average-pool + linear (tests/deploy/test_onnx_export.py checks the same set).
NO_CAM = {"mobilenetv3_ofa_595", "vgg19_bn"}
CAM_MODELS = [n for n in list_models() if n not in NO_CAM]


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 72 x 60 phantom PNG (not square: the map is put back through the letterbox)."""
    from medlite.data.synthetic import generate_phantom

    img = generate_phantom("pneumonia", 72, np.random.default_rng(3))[0]
    path = tmp_path_factory.mktemp("cam-image") / "chest.png"
    cv2.imwrite(str(path), np.rint(img[:, 6:66] * 255).astype(np.uint8))
    return path


@pytest.mark.parametrize("name", CAM_MODELS)
def test_onnx_cam_matches_gradcam(name: str, exported_model: Callable[[str], tuple[Path, Any]], xray: Path,
                                  tmp_path: Path) -> None:
    from medlite.api import predict
    from medlite.explain import explain_images

    run, _ = exported_model(name)
    onnx = run / EXPORT_DIR / ONNX_FILE
    rows = predict(onnx, [xray], cam=tmp_path / "onnx")  # the `medlite predict --cam` path, torch-free
    record = json.loads((tmp_path / "onnx" / "cams.json").read_text())[0]
    assert record["target_name"] == rows[0]["predicted"] and record["method"] == "cam"
    cam = np.load(record["map"])
    assert Path(record["overlay"]).is_file() and cam.shape == (72, 60)

    # The torch Grad-CAM of `medlite explain --method gradcam` at the model's CAM layer, same class.
    grad = explain_images([run], [xray], methods=["gradcam"], target=record["target"], out=tmp_path / "torch")
    assert grad[0]["layer"] == record["layer"]
    gradcam = np.load(grad[0]["map"])
    assert gradcam.shape == cam.shape
    if gradcam.max() == 0:  # no positive evidence: both maps must be empty
        assert cam.max() == 0
    else:
        assert np.corrcoef(cam.ravel(), gradcam.ravel())[0, 1] >= 0.99
        assert np.abs(cam - gradcam).max() < 0.02  # same normalisation, not only the same shape


def test_models_without_cam_say_so(exported_model: Callable[[str], tuple[Path, Any]], xray: Path,
                                   tmp_path: Path) -> None:
    from medlite.api import predict
    from medlite.deploy import OnnxClassifier

    run, _ = exported_model("mobilenetv3_ofa_595")
    onnx = run / EXPORT_DIR / ONNX_FILE
    reason = cam_unavailable(OnnxClassifier(onnx).contract)
    assert reason is not None and "mobilenetv3_ofa_595" in reason and "feature-mix" in reason
    with pytest.raises(MedliteError, match="--cam: mobilenetv3_ofa_595.*medlite explain"):
        predict(onnx, [xray], cam=tmp_path / "cams")
    assert not (tmp_path / "cams").exists()
    rows = predict(onnx, [xray])  # prediction itself is unaffected
    assert rows[0]["status"] == "ok"


def test_cam_arithmetic() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 3, 3)).astype(np.float32)
    w = rng.normal(size=(1, 5))
    single = {"model": "m", "input_size": 12,
              "cam": {"available": True, "weights": w.tolist(), "bias": [0.0], "single_logit": True}}
    two = {**single, "cam": {"available": True, "weights": [(-w[0]).tolist(), w[0].tolist()], "bias": [0, 0]}}
    maps = class_activation_maps(features, single, [0, 1])
    assert maps.shape == (2, 12, 12) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps, class_activation_maps(features, two, [0, 1]), atol=1e-6)
    # The raw map before upsampling: ReLU(sum_k w_k A_k); its arg-max is where the upsampled map peaks.
    raw = np.maximum(np.einsum("chw,c->hw", features[1], w[0]), 0)
    peak = np.unravel_index(np.argmax(class_activation_maps(features[1:], single, [1], size=3)[0]), (3, 3))
    assert peak == np.unravel_index(np.argmax(raw), raw.shape)
    with pytest.raises(ModelError, match="out of range"):
        class_activation_maps(features, single, [0, 2])
    with pytest.raises(ModelError, match="do not fit"):
        class_activation_maps(features[:, :4], single, [0, 1])
    assert "export the run again" in cam_unavailable({"model": "old"})
    with pytest.raises(ModelError, match="no map here"):
        class_activation_maps(features, {"cam": {"available": False, "reason": "no map here"}}, [0, 1])
