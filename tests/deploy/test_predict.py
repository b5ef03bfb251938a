"""Tests for medlite.deploy.prediction: folders with PNG, DICOM and broken files; CSV/JSON; no torch on ONNX."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from dicom_writer import PATIENT_ID, write_dicom

from medlite.deploy import export_run, predict
from medlite.deploy.onnx_export import EXPORT_DIR, INT8_FILE, ONNX_FILE
from medlite.errors import DataError, MedliteError, ModelError

SECRETS = ("Doe", "Janet", PATIENT_ID)
COLUMNS = ["file", "predicted", "prob_normal", "prob_pneumonia", "threshold", "ood_score", "status"]


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """``scans/``: an 8-bit PNG, a 16-bit PNG and a DICOM in nested folders, a DICOM without suffix, a
    corrupt PNG; plus a text file and a hidden folder that must be ignored."""
    from medlite.data.synthetic import generate_phantom

    rng = np.random.default_rng(0)
    root = tmp_path / "scans"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    img = generate_phantom("pneumonia", 64, rng)[0]  # float (64, 64) in [0, 1]
    cv2.imwrite(str(root / "a.png"), np.rint(img[:, 8:56] * 255).astype(np.uint8))  # 64 x 48: letterboxed
    cv2.imwrite(str(root / "sub" / "b.png"), np.rint(img * 65535).astype(np.uint16))
    write_dicom(root / "sub" / "deep" / "c.dcm", np.rint(img * 4095).astype(np.uint16))
    write_dicom(root / "sub" / "scan0001", np.rint(img.T * 4095).astype(np.uint16))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "notes.txt").write_text("not an image")
    cv2.imwrite(str(root / ".hidden" / "x.png"), np.zeros((8, 8), np.uint8))
    return root


def _no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_folder_to_csv_with_threshold(binary_export: tuple[Path, dict[str, Any]], scans: Path,
                                      tmp_path: Path) -> None:
    run, _ = binary_export
    out = tmp_path / "pred.csv"
    with pytest.warns(UserWarning, match="1 of 5 files could not be read"):
        rows = predict(run / EXPORT_DIR / ONNX_FILE, [scans], out=out, batch_size=2)
    names = [Path(r["file"]).name for r in rows]
    assert sorted(names) == ["a.png", "b.png", "broken.png", "c.dcm", "scan0001"]
    by_name = {Path(r["file"]).name: r for r in rows}
    broken = by_name["broken.png"]
    assert broken["status"].startswith("error: ") and broken["predicted"] is None
    for name in ("a.png", "b.png", "c.dcm", "scan0001"):
        row = by_name[name]
        assert row["status"] == "ok" and list(row) == COLUMNS
        assert row["prob_normal"] + row["prob_pneumonia"] == pytest.approx(1.0, abs=2e-6)
        assert row["threshold"] == pytest.approx(0.4)
        assert row["predicted"] == ("pneumonia" if row["prob_pneumonia"] >= 0.4 else "normal")

    text = out.read_text()
    _no_secrets(text)
    table = list(csv.DictReader(text.splitlines()))
    assert list(table[0]) == COLUMNS and len(table) == 5
    broken = next(r for r in table if r["file"].endswith("broken.png"))
    assert broken["prob_normal"] == "" and broken["status"].startswith("error: ")


def test_run_dir_and_onnx_agree_and_json(binary_export: tuple[Path, dict[str, Any]], scans: Path,
                                         tmp_path: Path) -> None:
    run, _ = binary_export
    files = [scans / "a.png", scans / "sub" / "deep" / "c.dcm"]
    eager = predict(run, files, out=tmp_path / "eager.json")
    onnx_rows = predict(run / EXPORT_DIR / ONNX_FILE, files, batch_size=1)
    int8_rows = predict(run / EXPORT_DIR / INT8_FILE, files)
    for a, b, c in zip(eager, onnx_rows, int8_rows, strict=True):
        assert a["file"] == b["file"] == c["file"] and a["status"] == b["status"] == "ok"
        assert a["prob_pneumonia"] == pytest.approx(b["prob_pneumonia"], abs=1e-5)
        assert a["threshold"] == b["threshold"] == c["threshold"]
    text = (tmp_path / "eager.json").read_text()
    _no_secrets(text)
    payload = json.loads(text)
    assert payload["classes"] == ["normal", "pneumonia"] and payload["threshold"] == pytest.approx(0.4)
    assert payload["n_files"] == 2 and payload["n_errors"] == 0
    assert [r["file"] for r in payload["predictions"]] == [str(f) for f in files]


def test_multiclass_has_no_threshold(make_run: Callable[..., Path], scans: Path) -> None:
    run = make_run("hybridnet_xr_50", size=32)
    export_run(run)
    rows = predict(run / EXPORT_DIR / ONNX_FILE, [scans / "a.png", scans / "sub"], recursive=False)
    assert [Path(r["file"]).name for r in rows] == ["a.png", "b.png", "scan0001"]  # not sub/deep/c.dcm
    for row in rows:
        probs = [row["prob_normal"], row["prob_bacterial"], row["prob_viral"]]
        assert "threshold" not in row and sum(probs) == pytest.approx(1.0, abs=2e-6)
        assert row["predicted"] == ["normal", "bacterial", "viral"][int(np.argmax(probs))]


def test_onnx_path_never_imports_torch(binary_export: tuple[Path, dict[str, Any]], scans: Path) -> None:
    run, _ = binary_export
    code = (
        "import json, sys, time\n"
        "start = time.perf_counter()\n"
        "from medlite.deploy import predict\n"
        "rows = predict(sys.argv[1], [sys.argv[2]])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'ok': rows[0]['status'] == 'ok',\n"
        "                  'seconds': time.perf_counter() - start}))\n"
    )
    dicom = scans / "sub" / "deep" / "c.dcm"
    result = subprocess.run([sys.executable, "-c", code, str(run / EXPORT_DIR / ONNX_FILE), str(dicom)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["torch"] is False


def test_user_errors_are_one_line(binary_export: tuple[Path, dict[str, Any]], scans: Path,
                                  tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    model = binary_export[0] / EXPORT_DIR / ONNX_FILE
    with pytest.raises(DataError, match="missing.png: input not found"):
        predict(model, [scans / "a.png", tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files found"):
        predict(model, [tmp_path / "empty"])
    with pytest.raises(MedliteError, match="must end in .csv or .json"):
        predict(model, [scans], out=tmp_path / "pred.xlsx")
    with pytest.raises(MedliteError, match="--batch-size"):
        predict(model, [scans], batch_size=0)
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="run directory or an exported .onnx"):
        predict(tmp_path / "weights.pt", [scans])
    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(plain))
    with pytest.raises(ModelError, match="no medlite preprocessing metadata"):
        predict(plain, [scans])
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        predict(tmp_path / "junk.onnx", [scans])


@pytest.fixture
def windowed_dicom(tmp_path: Path) -> Path:
    """A 12-bit DICOM whose header window (narrow, on the dark half) differs a lot from the auto window."""
    from medlite.data.synthetic import generate_phantom

    img = generate_phantom("pneumonia", 64, np.random.default_rng(1))[0]
    return write_dicom(tmp_path / "w.dcm", np.rint(300 + img * 3500).astype(np.uint16), window=(900.0, 400.0))


def test_contract_carries_the_dicom_window_and_predict_applies_it(make_run: Callable[..., Path],
                                                                    windowed_dicom: Path) -> None:
    from medlite.data.imageio import read_image
    from medlite.data.preprocess import PreprocessConfig, preprocess_image
    from medlite.deploy.classifiers import OnnxClassifier

    run = make_run("hybridnet_xr_50", size=32, classes="binary", threshold=0.5, dicom_window="auto",
                   equalize="hist", head_scale=0.3)
    export_run(run)
    model = run / EXPORT_DIR / ONNX_FILE
    classifier = OnnxClassifier(model)
    stored = classifier.contract["preprocess"]
    assert stored["dicom_window"] == "auto" and stored["quantize"] == "last"
    cfg = PreprocessConfig(**stored)
    probs = {mode: classifier.predict_proba(preprocess_image(read_image(windowed_dicom, dicom_window=mode),
                                                             cfg)[None])[0, 1] for mode in ("auto", "header")}
    assert 0.01 < probs["auto"] < 0.99 and abs(probs["auto"] - probs["header"]) > 1e-3  # the window matters
    for source in (model, run):  # ONNX and eager agree on the contract
        row = predict(source, [windowed_dicom])[0]
        assert row["prob_pneumonia"] == pytest.approx(probs["auto"], abs=1e-5)


def test_old_run_without_the_new_settings_keeps_its_preprocessing(make_run: Callable[..., Path],
                                                                    windowed_dicom: Path) -> None:
    import yaml

    from medlite.config import load_config
    from medlite.data.imageio import read_image
    from medlite.data.preprocess import LEGACY_SETTINGS, PreprocessConfig, preprocess_image
    from medlite.deploy.classifiers import TorchClassifier
    from medlite.deploy.contract import run_contract
    from medlite.rundir import layout
    from medlite.rundir.store import load_run_model
    from medlite.utils import atomic

    run = make_run("hybridnet_xr_50", size=32, classes="binary", threshold=0.5, equalize="hist", head_scale=0.3)
    # what a run directory written before dicom_window/quantize existed holds
    info = atomic.read_json(run / layout.RUN_INFO)
    raw = yaml.safe_load((run / layout.CONFIG).read_text())
    for key in LEGACY_SETTINGS:
        del info["preprocess"][key], raw["preprocess"][key]
    atomic.write_json(run / layout.RUN_INFO, info)
    atomic.write_text(run / layout.CONFIG, yaml.safe_dump(raw, sort_keys=False))

    contract = run_contract(run)
    assert contract["preprocess"]["dicom_window"] == "none" and contract["preprocess"]["quantize"] == "first"
    assert load_run_model(run)[1].preprocess.dicom_window == "none"
    assert load_config(run / layout.CONFIG).preprocess.dicom_window == "header"  # a plain config: today's default
    legacy = PreprocessConfig(**contract["preprocess"])
    expected = TorchClassifier(run).predict_proba(
        preprocess_image(read_image(windowed_dicom, dicom_window="none"), legacy)[None])[0, 1]
    today = TorchClassifier(run).predict_proba(
        preprocess_image(read_image(windowed_dicom), PreprocessConfig(size=32, equalize="hist"))[None])[0, 1]
    assert 0.01 < expected < 0.99 and abs(expected - today) > 1e-3
    assert predict(run, [windowed_dicom])[0]["prob_pneumonia"] == pytest.approx(expected, abs=1e-6)
    export_run(run)  # an export of the old run writes the resolved settings into the ONNX contract
    row = predict(run / EXPORT_DIR / ONNX_FILE, [windowed_dicom])[0]
    assert row["prob_pneumonia"] == pytest.approx(expected, abs=1e-5)
