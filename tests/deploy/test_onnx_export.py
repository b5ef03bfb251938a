"""Tests for medlite.deploy.onnx_export: every registered model exports with parity; contract; failures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from medlite.deploy import OnnxClassifier, describe_report, export_run, read_metadata, run_contract
from medlite.deploy.contract import OUTPUT_NAMES
from medlite.deploy.onnx_export import EXPORT_DIR, INT8_FILE, ONNX_FILE, PARITY_FILE, parity_metrics
from medlite.errors import MedliteError, ModelError
from medlite.models import list_models
from medlite.rundir.store import load_run_model

HEAVY = {"vgg19_bn"}  # 140 M parameters; below 224 px its 7x7 adaptive pool needs the slow torch.export path
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]
# Heads that are not global-average-pool + linear: OFA's feature-mix layer after the pool, VGG's FC blocks.
NO_CAM = {"mobilenetv3_ofa_595", "vgg19_bn"}


def _run_images(run: Path, n: int) -> np.ndarray:
    """The first ``n`` preprocessed uint8 (n, S, S) images of the run's data (its phantom cache exists)."""
    from medlite.config import load_config
    from medlite.data.prepared import prepare_data

    images = prepare_data(load_config(run / "config.yaml"), progress=False).cached.images
    return np.array(images[:n])  # a writable copy of the read-only memmap rows


def _eager_outputs(run: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Eager PyTorch logits, pooled features and backbone map (= the CAM layer's map for these models)."""
    import torch

    from medlite.deploy.contract import normalise

    model, _, info = load_run_model(run)
    x = torch.from_numpy(normalise(images, {**info, "input_size": images.shape[1]}))
    with torch.inference_mode():
        fmap = model.forward_features(x)
        return {"logits": model.forward_head(fmap).numpy(), "pooled": model.forward_head(fmap, True).numpy(),
                "cam_features": fmap.numpy()}


def _eager_logits(run: Path, images: np.ndarray) -> np.ndarray:
    import torch

    from medlite.models.inputs import predict_logits

    model, _, info = load_run_model(run)
    with torch.inference_mode():
        return predict_logits(model, images, in_chans=info["in_chans"])


@pytest.mark.parametrize("name", MODELS)
def test_every_model_exports_with_parity(name: str, exported_model: Callable[[str], tuple[Path, Any]]) -> None:
    run, report = exported_model(name)

    fp32 = report["fp32"]
    assert fp32["passed"] and fp32["n_images"] >= 2
    assert fp32["max_abs_prob_diff"] <= 1e-3 and fp32["top1_agreement"] >= 0.99
    assert fp32["batch1_max_abs_diff"] <= 1e-3
    assert (run / EXPORT_DIR / ONNX_FILE).is_file() and not (run / EXPORT_DIR / INT8_FILE).exists()
    saved = json.loads((run / EXPORT_DIR / PARITY_FILE).read_text())
    assert saved["fp32"]["top1_agreement"] == fp32["top1_agreement"] and saved["model"] == name

    # The extra outputs: pooled features and the CAM layer's map, equal to eager PyTorch's.
    session = OnnxClassifier(run / EXPORT_DIR / ONNX_FILE)
    assert session.output_names == list(OUTPUT_NAMES) == session.contract["outputs"]
    images = _run_images(run, 3)
    got, want = session.outputs(images), _eager_outputs(run, images)
    for key in OUTPUT_NAMES:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key], want[key], atol=2e-4 * max(1.0, np.abs(want[key]).max()), rtol=1e-3)
    cam = session.contract["cam"]
    model, _, _ = load_run_model(run)
    assert cam["layer"] == model.cfg.cam_layer and cam["available"] is (name not in NO_CAM)
    if cam["available"]:
        weight = np.asarray(cam["weights"])
        assert weight.shape == (want["logits"].shape[1], want["cam_features"].shape[1])
        # The stored weights reproduce the logits from the spatial mean of the exported map.
        np.testing.assert_allclose(got["cam_features"].mean((2, 3)) @ weight.T + np.asarray(cam["bias"]),
                                   got["logits"], atol=1e-4, rtol=1e-4)
    else:
        assert "no class activation map" in cam["reason"] and "weights" not in cam


@pytest.mark.parametrize(("name", "kwargs", "why"), [
    ("squeezenet1_1", {"head_relu": True}, "not a linear function"),
    ("vit_tiny_patch16", {"global_pool": "token"}, "class token"),
    ("squeezenet1_1", {}, None),
    ("vit_tiny_patch16", {}, None),
])
def test_cam_head_decides_from_the_head(name: str, kwargs: dict[str, Any], why: str | None) -> None:
    import torch

    from medlite.deploy.graph_outputs import ExportGraph, cam_head
    from medlite.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=2, in_chans=1, **kwargs).eval()
    x = torch.randn(2, 1, 32, 32)
    cam = cam_head(model, x)
    assert cam["available"] is (why is None)
    if why:
        assert why in cam["reason"]
    _, _, features = ExportGraph(model, x)(x)
    assert features.ndim == 4 and features.shape[0] == 2  # ViT tokens folded to their patch grid



def test_contract_round_trips_and_batch_is_dynamic(make_run: Callable[..., Path]) -> None:
    run = make_run("hybridnet_xr_50", size=40, resize="crop", equalize="clahe", clahe_clip=3.0,
                   gaussian_sigma=0.5, channels=3)
    report = export_run(run, opset=18, out=run / "elsewhere")
    path = run / "elsewhere" / ONNX_FILE
    meta = read_metadata(path)
    info = json.loads((run / "run.json").read_text())
    assert meta["classes"] == info["classes"] == ["normal", "bacterial", "viral"]
    assert meta["in_chans"] == 3 and meta["input_size"] == 40
    assert meta["preprocess"] == info["preprocess"]
    assert meta["preprocess"]["resize"] == "crop" and meta["preprocess"]["clahe_clip"] == 3.0
    assert meta["mean"] == info["mean"] and meta["std"] == info["std"] and meta["model"] == "hybridnet_xr_50"
    assert meta["opset"] == report["opset"] == 18 and meta["exporter"] == "torchscript"
    assert meta["precision"] == "fp32" and "threshold" not in meta  # three classes: no operating threshold
    assert OnnxClassifier(path).contract == meta  # what predict reads is what was written
    contract = run_contract(run)
    assert {k: meta[k] for k in contract} == contract

    # Dynamic batch axis: batches of 1 and 5 both run and match eager PyTorch on the same images.
    session = OnnxClassifier(path)
    images = _run_images(run, 5)
    five, one = session.logits(images), session.logits(images[:1])
    assert five.shape == (5, 3) and one.shape == (1, 3)
    np.testing.assert_allclose(five, _eager_logits(run, images), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(one[0], five[0], atol=1e-5)
    import onnx

    assert onnx.load(str(path)).opset_import[0].version == 18


def test_binary_threshold_and_int8(binary_export: tuple[Path, dict[str, Any]]) -> None:
    run, report = binary_export
    meta = read_metadata(run / EXPORT_DIR / ONNX_FILE)
    assert meta["threshold"] == pytest.approx(0.4) and meta["positive_class"] == "pneumonia"
    assert meta["preprocess"]["equalize"] == "clahe" and meta["preprocess"]["median_ksize"] == 3
    assert "threshold_agreement" in report["fp32"]

    int8 = report["int8"]
    assert (run / EXPORT_DIR / INT8_FILE).is_file()
    assert int8["quant_format"] == "QDQ" and int8["per_channel"] and int8["calibration_split"] == "train"
    assert int8["fp32_nodes"] and int8["weight_type"].startswith("uint8")
    assert 1 <= int8["calibration_images"] <= 128 and int8["n_images"] == report["fp32"]["n_images"]
    assert int8["size_reduction"] > 1.5  # int8 weights; QDQ scales and the fp32 stem add a little
    assert int8["max_abs_prob_diff"] < 0.4 and int8["batch1_max_abs_diff"] < 1e-4  # 0.12 now
    # On all phantoms, int8 tracks fp32: the positive-class logit margins correlate strongly (a random net is
    # far less smooth than a trained one, so this is a loose check that the calibration and QDQ graph work).
    images = _run_images(run, 64)
    margin = {name: np.diff(OnnxClassifier(run / EXPORT_DIR / name).logits(images), axis=1)[:, 0]
              for name in (ONNX_FILE, INT8_FILE)}
    # 0.92 now; 0.14 when the calibration reader was deliberately broken.
    assert np.corrcoef(margin[ONNX_FILE], margin[INT8_FILE])[0, 1] > 0.8
    assert isinstance(int8["passed"], bool)
    quant_meta = read_metadata(run / EXPORT_DIR / INT8_FILE)
    assert quant_meta["precision"] == "int8" and quant_meta["quantization"]["per_channel"] is True
    assert quant_meta["cam"] == meta["cam"] and meta["cam"]["available"]
    quantised = OnnxClassifier(run / EXPORT_DIR / INT8_FILE)
    assert quantised.output_names == list(OUTPUT_NAMES)
    outs, ref = quantised.outputs(images[:4]), OnnxClassifier(run / EXPORT_DIR / ONNX_FILE).outputs(images[:4])
    for key in OUTPUT_NAMES:
        assert outs[key].shape == ref[key].shape and np.isfinite(outs[key]).all()
    # int8 pooled features track fp32 ones (they feed the out-of-distribution checks).
    assert np.corrcoef(outs["pooled"].ravel(), ref["pooled"].ravel())[0, 1] > 0.9
    assert quant_meta["classes"] == meta["classes"] and quant_meta["threshold"] == meta["threshold"]
    assert json.loads((run / EXPORT_DIR / PARITY_FILE).read_text())["int8"]["size_mb"] == int8["size_mb"]
    summary = describe_report(report).splitlines()
    assert len(summary) == 3 and summary[1].lstrip().startswith("fp32:") and "int8" in summary[2]


def test_int8_weight_type_is_selectable(make_run: Callable[..., Path], tmp_path: Path) -> None:
    """``int8_weights="int8"`` writes signed (U8S8) weights; the default stays unsigned (U8U8)."""
    run = make_run("hybridnet_xr_50", size=32)
    report = export_run(run, int8=True, int8_weights="int8", out=tmp_path)
    assert report["int8"]["weight_type"].startswith("int8")
    graph = onnx.load(str(tmp_path / INT8_FILE)).graph
    weight_types = {init.data_type for init in graph.initializer if init.name.endswith("_quantized")}
    assert onnx.TensorProto.INT8 in weight_types and onnx.TensorProto.UINT8 not in weight_types
    assert read_metadata(tmp_path / INT8_FILE)["quantization"]["weight_type"].startswith("int8")


def test_int8_keeps_more_leading_layers_fp32_until_parity(make_run: Callable[..., Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import medlite.deploy.onnx_export as onnx_export

    run = make_run("mobilenet_v2_050", size=32)
    fp32_criteria = onnx_export._failures
    # The int8 checks always fail, so every fallback is tried; the fp32 checks are the real ones.
    monkeypatch.setattr(onnx_export, "_failures", lambda metrics, max_diff: fp32_criteria(metrics, max_diff)
                        if max_diff is not None else ["int8 forced to fail"])
    with pytest.warns(UserWarning, match="first 50% of the layers in fp32"):
        int8 = export_run(run, int8=True, out=tmp_path)["int8"]
    attempts = int8["attempts"]
    assert [a["fp32_leading"] for a in attempts] == [0.0, 0.25, 0.5] and not any(a["passed"] for a in attempts)
    counts = [a["fp32_nodes"] for a in attempts]
    assert counts[0] < counts[1] < counts[2] == len(int8["fp32_nodes"])  # the last try is the one kept
    graph = onnx.load(str(tmp_path / INT8_FILE)).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    kept = set(int8["fp32_nodes"])
    assert convs[0] in kept and convs[-1] not in kept  # leading layers in fp32, the rest still int8
    assert int8["fp32_leading"] == 0.5
    report = {"model": "m", "opset": 17, "exporter": "x", "n_parity_images": 1, "parity_split": "val", "int8": int8}
    assert "first 50% of the layers kept fp32" in describe_report(report)


def test_failed_parity_leaves_no_model(make_run: Callable[..., Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import medlite.deploy.onnx_export as onnx_export

    run = make_run("hybridnet_xr_50", size=32)
    monkeypatch.setattr(onnx_export, "FP32_MAX_ABS_DIFF", -1.0)  # no model can meet it
    with pytest.raises(MedliteError, match="parity failed"):
        export_run(run)
    out = run / EXPORT_DIR
    assert not (out / ONNX_FILE).exists()
    assert sorted(p.name for p in out.iterdir()) == [PARITY_FILE]  # no temporary files left either
    assert json.loads((out / PARITY_FILE).read_text())["fp32"]["passed"] is False


def test_bad_arguments_are_one_line_errors(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_run("hybridnet_xr_50", size=32)
    with pytest.raises(MedliteError, match="only 'onnx'"):
        export_run(run, format="tflite")
    with pytest.raises(ModelError, match="--opset 9"):
        export_run(run, opset=9)
    with pytest.raises(MedliteError, match="not found"):
        export_run(tmp_path / "missing")
    with pytest.raises(MedliteError, match="expected 'uint8' or 'int8'"):
        export_run(run, int8=True, int8_weights="int4")
    with pytest.raises(ModelError, match="not a readable ONNX"):
        read_metadata(tmp_path / "missing.onnx")


def test_parity_metrics() -> None:
    ref = np.array([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    cand = np.array([[0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    m = parity_metrics(ref, cand, threshold=0.5)
    assert m["n_images"] == 3 and m["max_abs_prob_diff"] == pytest.approx(0.1)
    assert m["top1_agreement"] == pytest.approx(2 / 3) and m["threshold_agreement"] == pytest.approx(2 / 3)
