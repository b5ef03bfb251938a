"""API tests of medlite serve (FastAPI TestClient) on the shared tiny run, exported once: every endpoint, token on
and off, every bad input answered with a clear JSON error, and the next request still answered."""

from __future__ import annotations

import base64
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from dicom_writer import SECRETS

from medlite.errors import MedliteError

TOKEN = "s3cret-token-for-tests-0123"
NAME = "Doe_Janet_PID-0987654.png"  # a file name that identifies a patient: it must never come back or be logged


def _post(client: Any, *uploads: bytes, token: str | None = None, **fields: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    files = [("files", (NAME, data, "image/png")) for data in uploads]
    return client.post("/api/v1/predict", files=files, data=fields, headers=headers)


def _decode_png(b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def client(make_client: Callable[..., Any]) -> Any:
    return make_client()


def test_predict_returns_probabilities_display_and_heatmap(client: Any, images: dict[str, bytes]) -> None:
    response = _post(client, images["png"], heatmap="true", display="true")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"  # results are never cached
    body = response.json()
    assert body["classes"][2] == "Normal" and re.fullmatch(r"[0-9a-f]{8}", body["request_id"])
    (item,) = body["results"]
    assert item["status"] == "ok" and item["image"] == 1
    probs = item["probabilities"]
    assert list(probs) == body["classes"] and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert item["predicted"] == max(probs, key=probs.get)
    assert item["abnormal_probability"] == pytest.approx(1 - probs["Normal"], abs=1e-6)
    assert item["summary"].startswith(f"Most likely {item['predicted']}")
    display = _decode_png(item["display_png"])
    heat = _decode_png(item["heatmap_png"])
    assert display.shape == (64, 64) and heat.shape == (64, 64, 4)  # BGRA layer on the display geometry
    assert heat[..., 3].max() == 255  # alpha = the map, normalised to [0, 1]
    assert "stages.3" in item["heatmap_note"]
    # The same bytes through `medlite predict` give the same probabilities (one prediction path).
    plain = _post(client, images["png"]).json()["results"][0]
    assert plain["probabilities"] == probs and "heatmap_png" not in plain and "display_png" not in plain


def test_accepted_formats_agree(client: Any, images: dict[str, bytes]) -> None:
    results = {}
    for name in ("png", "png16", "rgba", "jpeg", "dicom", "mono1"):
        response = _post(client, images[name])
        assert response.status_code == 200, (name, response.text)
        results[name] = response.json()["results"][0]["probabilities"]
    for name in ("png16", "rgba"):  # 16-bit and alpha PNGs read as the same gray image
        assert results[name] == pytest.approx(results["png"], abs=2e-3)
    # MONOCHROME1 stores the inverted values; read correctly it is the same X-ray.
    assert results["mono1"] == pytest.approx(results["dicom"], abs=1e-6)


@pytest.mark.parametrize(("name", "status", "words"), [
    ("empty", 400, "empty upload"),
    ("truncated_jpeg", 400, "truncated JPEG"),
    ("text", 415, "not an image"),
    ("bmp", 415, "a BMP file"),
    ("garbage_png", 400, "corrupt PNG"),
    ("multiframe", 400, "multi-frame DICOM"),
    ("ybr", 400, "PhotometricInterpretation"),
    ("bomb", 413, "20000 x 20000 pixels"),
])
def test_bad_images_are_clear_errors(client: Any, images: dict[str, bytes], name: str, status: int,
                                     words: str) -> None:
    response = _post(client, images[name], heatmap="true")
    assert response.status_code == status, response.text
    body = response.json()
    assert words in body["error"] and body["results"][0]["status"] == "error"
    assert NAME not in response.text and "Doe" not in response.text
    assert _post(client, images["png"]).status_code == 200  # the next request is answered


def test_a_batch_keeps_its_good_images(client: Any, images: dict[str, bytes]) -> None:
    response = _post(client, images["png"], images["text"], images["dicom"], display="true")
    assert response.status_code == 200
    items = response.json()["results"]
    assert [i["image"] for i in items] == [1, 2, 3]
    # The DICOM phantom may be flagged by the gate (unlike the training images): still a result, with its class.
    assert [i["status"].split(":")[0] for i in items] in (["ok", "error", "ok"], ["ok", "error", "flagged"])
    assert items[1]["code"] == 415 and items[2]["predicted"] is not None
    assert items[1]["error"].startswith("unsupported file type")


def test_form_errors(client: Any, images: dict[str, bytes]) -> None:
    assert _post(client, images["png"], heatmap="maybe").json()["error"] == \
        "form field 'heatmap': expected true or false"
    response = client.post("/api/v1/predict", data={"heatmap": "true"})
    assert response.status_code in (400, 415) and "error" in response.json()
    response = client.post("/api/v1/predict", content=images["png"], headers={"Content-Type": "image/png"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]
    response = client.post("/api/v1/predict", files=[("other", ("x.png", images["png"], "image/png"))])
    assert response.status_code == 400 and "'files'" in response.json()["error"]
    assert client.get("/api/v1/predict").status_code == 405
    assert client.get("/api/v1/predict").json() == {"error": "method not allowed"}
    for path in ("/nope", "/static/secret.py", "/docs", "/openapi.json", "/api/v1/nope"):
        response = client.get(path)
        assert response.status_code == 404 and response.json() == {"error": "not found"}, path
    assert _post(client, images["png"]).status_code == 200


def test_upload_limits(make_client: Callable[..., Any], images: dict[str, bytes]) -> None:
    small = make_client(max_upload_mb=0.05, max_files=2)
    big = np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8)  # ~160 kB PNG of noise
    response = _post(small, cv2.imencode(".png", big)[1].tobytes())
    assert response.status_code == 413 and "0.05 MB limit" in response.json()["error"]
    response = _post(small, images["png"], images["png"], images["png"])
    assert response.status_code == 413 and "more than 2 files" in response.json()["error"]
    assert _post(small, images["png"]).status_code == 200


def test_busy_and_timeout_answer_503(make_client: Callable[..., Any], images: dict[str, bytes]) -> None:
    client = make_client(queue=1)
    engine = client.app.state.engine
    assert engine.admit()  # another request holds the only slot
    response = _post(client, images["png"])
    assert response.status_code == 503 and "busy" in response.json()["error"]
    assert response.headers["retry-after"] == "1"
    engine.release()
    assert _post(client, images["png"]).status_code == 200 and engine.pending == 0

    slow = make_client(timeout_s=0.2)
    engine = slow.app.state.engine
    process = engine.process
    engine.process = lambda *a, **k: (time.sleep(0.6), process(*a, **k))[1]
    response = _post(slow, images["png"])
    assert response.status_code == 503 and "longer than 0.2 s" in response.json()["error"]
    time.sleep(0.8)
    assert engine.pending == 0  # the slot came back when the worker finished
    engine.process = process
    assert _post(slow, images["png"]).status_code == 200


def test_token(make_client: Callable[..., Any], images: dict[str, bytes]) -> None:
    client = make_client(token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": TOKEN}):
        for response in (client.get("/api/v1/model", headers=headers),
                         client.post("/api/v1/predict", headers=headers,
                                     files=[("files", ("x.png", images["png"], "image/png"))])):
            assert response.status_code == 401 and "access token" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get(f"/api/v1/model?token={TOKEN}").status_code == 401  # never in a URL
    assert client.get("/api/v1/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert _post(client, images["png"], token=TOKEN).status_code == 200
    # The page (static, no data: it shows the login form) and the liveness check stay reachable.
    assert client.get("/").status_code == 200 and client.get("/healthz").json() == {"status": "ok"}
    for _ in range(20):  # guessing: after 20 wrong tokens in a minute everyone waits
        client.get("/api/v1/model", headers={"Authorization": "Bearer guess"})
    response = client.get("/api/v1/model", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 429 and "wait a minute" in response.json()["error"]


def test_model_endpoint(client: Any) -> None:
    response = client.get("/api/v1/model")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    info = response.json()
    assert info["model"] == "hybridnet_xr_50" and len(info["classes"]) == 6 and info["input_size"] == 48
    assert info["heatmap"] == {"available": True, "layer": "stages.3", "reason": None,
                               "method": "cam (global-average-pool + linear head)"}
    assert "weights" not in response.text  # the CAM weights stay in the model file
    card = info["card"]
    assert card["training_data"]["synthetic"] is True and sum(card["training_data"]["images"]["train"].values())
    results = card["results"]
    assert results["split"] == "test" and results["n"] > 0 and len(results["ci95"]["accuracy"]) == 2
    assert info["not_a_device"] == "Not a diagnostic device; a clinician decides."
    assert info["abnormal_rule"] == "1 - probability of Normal" and info["limits"]["max_megapixels"] == 40


def test_page_and_headers(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    html = page.text
    # No inline script or style, no handler attributes, nothing from another origin.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and not re.search(r"\son\w+=|\sstyle=", html)
    assert "http://" not in html and "https://" not in html
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert "http://" not in asset.text and "https://" not in asset.text and "@import" not in asset.text
    assert "localStorage" not in client.get("/static/app.js").text  # the token stays in memory


def test_logs_and_answers_hold_no_identifiers(client: Any, images: dict[str, bytes],
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="medlite.serve"):
        response = _post(client, images["dicom"], images["png"], heatmap="true", display="true")
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "medlite.serve"]
    (line,) = lines
    request_id = response.json()["request_id"]
    assert f"request={request_id}" in line and "status=200" in line and "files=2" in line
    assert re.search(r"bytes=\d{4,}", line) and re.search(r"latency_ms=\d", line)
    assert "predicted=" + ",".join(r["predicted"] for r in response.json()["results"]) in line
    for text in (line, response.text):
        assert NAME not in text and all(secret not in text for secret in SECRETS)
    assert response.headers["x-request-id"] == request_id


def test_keep_uploads_names_files_by_request(make_client: Callable[..., Any], images: dict[str, bytes],
                                             tmp_path: Path) -> None:
    client = make_client(keep_uploads=tmp_path / "kept")
    request_id = _post(client, images["png"], images["dicom"]).json()["request_id"]
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert kept == [f"{request_id}-1.png", f"{request_id}-2.dcm"]
    assert (tmp_path / "kept" / kept[1]).read_bytes() == images["dicom"]


def test_settings_refuse_unsafe_starts(served_onnx: Path, tmp_path: Path) -> None:
    from medlite.serve.settings import ServeSettings, read_token

    with pytest.raises(MedliteError, match="--host 0.0.0.0: serving beyond this machine needs --token-file"):
        ServeSettings(model=served_onnx, host="0.0.0.0")
    assert ServeSettings(model=served_onnx, host="0.0.0.0", token=TOKEN).token == TOKEN
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(MedliteError, match="at least 16 characters"):
        read_token(tmp_path / "short")
    (tmp_path / "good").write_text(f"  {TOKEN}\n")
    assert read_token(tmp_path / "good") == TOKEN
    with pytest.raises(MedliteError, match="cannot be read"):
        read_token(tmp_path / "missing")


def test_cli_refuses_lan_without_token(served_onnx: Path) -> None:
    from typer.testing import CliRunner

    from medlite.cli import app

    result = CliRunner().invoke(app, ["serve", str(served_onnx), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "needs --token-file" in result.output


def test_onnx_path_never_imports_torch(served_onnx: Path, images: dict[str, bytes], tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(images["dicom"])
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from fastapi.testclient import TestClient\n"
        "from medlite.serve.runner import build_app\n"
        "client = TestClient(build_app(sys.argv[1]))\n"
        "ready = time.perf_counter() - start\n"
        "r = client.post('/api/v1/predict', files=[('files', ('u', open(sys.argv[2], 'rb').read()))],\n"
        "                data={'heatmap': 'true', 'display': 'true'})\n"
        "assert r.status_code == 200, r.text\n"
        "print('torch' in sys.modules, round(ready, 2))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(served_onnx), str(tmp_path / "x.dcm")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    torch_loaded, ready = result.stdout.split()
    assert torch_loaded == "False"
    print(f"app built and model warmed up in {ready} s (fresh process, no torch)")


def test_run_dir_without_export_is_exported_first(trained_run: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    from medlite.serve.runner import resolve_model

    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    messages: list[str] = []
    onnx = resolve_model(copy, echo=messages.append)
    assert onnx == copy / "export" / "model.onnx" and onnx.is_file()
    assert "exporting the run" in messages[0]
    assert resolve_model(copy, echo=messages.append) == onnx and len(messages) == 1  # current: not redone
    with pytest.raises(MedliteError, match="model not found"):
        resolve_model(tmp_path / "missing")


def test_a_model_without_cam_says_why(make_client: Callable[..., Any], images: dict[str, bytes]) -> None:
    client = make_client()
    engine = client.app.state.engine
    engine.cam_reason = "vgg19_bn: the classifier does not read the spatial average of the CAM layer"  # as cam_head
    item = _post(client, images["png"], heatmap="true").json()["results"][0]
    assert item["status"] == "ok" and item["heatmap_png"] is None
    assert item["heatmap_note"] == engine.cam_reason  # the page shows "No heatmap: <reason>"


def test_a_colour_photo_is_rejected_before_the_model_and_the_server_keeps_serving(client: Any,
                                                                                  images: dict[str, bytes]) -> None:
    import skimage.data

    ok, photo = cv2.imencode(".png", cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    response = _post(client, photo.tobytes(), images["png"])
    assert response.status_code == 200
    rejected, good = response.json()["results"]
    assert rejected["status"] == "error" and rejected["code"] == 422
    assert rejected["error"].startswith("image 1: rejected: colour photograph") and "predicted" not in rejected
    assert good["predicted"] is not None and "ood_score" in good
