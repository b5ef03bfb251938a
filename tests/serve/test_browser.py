"""The real server (``medlite serve`` in a subprocess, uvicorn on 127.0.0.1) and the page in a real browser.

The browser is the Debian ``chromium`` driven by Playwright for Python (never ``playwright install``: these
machines cannot download browsers; ``make install`` installs chromium with apt-get when it runs as root). When
chromium or Playwright is missing the browser tests are skipped with the reason printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from dicom_writer import write_dicom

CHROMIUM = os.environ.get("MEDLITE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve_page.png"
TOKEN = "browser-test-token-0123456789"
pytestmark = pytest.mark.slow  # a training run, two servers and a browser: about 30 s on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``medlite serve ONNX --port P`` in a subprocess; ``ready_s`` = start to the first /healthz answer."""

    def __init__(self, onnx: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        start = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-c", "from medlite.cli import main; main()", "serve",
                                      str(onnx), "--port", str(self.port), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    assert json.load(r) == {"status": "ok"}
                break
            except OSError:
                if self.proc.poll() is not None or time.perf_counter() - start > 60:
                    raise RuntimeError(f"server did not start: {self.stop()}") from None
                time.sleep(0.05)
        self.ready_s = time.perf_counter() - start

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()  # the process this fixture started, by its handle
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture(scope="module")
def binary_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny binary run (normal / pneumonia phantoms, 2 epochs: its numbers mean nothing), exported: binary, so
    the page shows the operating threshold."""
    from medlite.serve.runner import resolve_model
    from medlite.workflows.train import train

    run = tmp_path_factory.mktemp("binary-run") / "hxr"
    train(out=run, source="synthetic:binary", model="hybridnet_xr_50", epochs=2, size=48, synthetic_per_class=12,
          synthetic_size=48, batch_size=12, progress=False)
    return resolve_model(run)


@pytest.fixture(scope="module")
def server(served_onnx: Path) -> Iterator[Server]:
    """The shared tiny six-class run (tests/conftest.py trained_run), exported, behind a real uvicorn."""
    live = Server(served_onnx)
    print(f"medlite serve answered /healthz {live.ready_s:.2f} s after the process started")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A phantom PNG and a phantom DICOM (with patient identifiers in its header), 256 px, ChestX6 classes."""
    from medlite.data.synthetic import generate_phantom

    folder = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(7)
    png = folder / "Doe_Janet_chest.png"
    cv2.imwrite(str(png), np.rint(generate_phantom("Pneumonia-Bacterial", 256, rng)[0] * 255).astype(np.uint8))
    dcm = folder / "PID-0987654.dcm"
    write_dicom(dcm, np.rint(generate_phantom("Normal", 256, rng)[0] * 4095).astype(np.uint16))
    return png, dcm


def _post(url: str, data: bytes, boundary: str = "medlite", token: str | None = None) -> dict[str, Any]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"u\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/api/v1/predict", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_live_server_survives_a_client_that_disconnects(server: Server, uploads: tuple[Path, Path]) -> None:
    assert server.ready_s < 15  # the 3 s target is measured on an idle machine (BENCHMARKS.md)
    data = uploads[0].read_bytes()
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
                    b"Content-Disposition: form-data; name=\"files\"; filename=\"u\"\r\n\r\n" + data[:2000])
    result = _post(server.url, data)["results"][0]  # the next request is answered
    assert result["status"] == "ok" and server.proc.poll() is None


def _browser() -> tuple[Any, Any]:
    """``(sync_playwright, expect)``, or a printed skip when Playwright or chromium is missing."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        reason = "Playwright for Python is not installed (pip install playwright; no browser download needed)"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        reason = f"chromium not found at {CHROMIUM} (apt-get install chromium; `make install` does it as root)"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    return sync_playwright, expect


def _open(playwright: Any, url: str) -> tuple[Any, Any, list[str], list[str]]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    errors: list[str] = []
    hosts: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP violations too
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: hosts.append(r.url.split("/")[2] if "://" in r.url else r.url[:5]))
    page.goto(url)
    return browser, page, errors, hosts


def test_page_in_a_real_browser(server: Server, uploads: tuple[Path, Path], tmp_path: Path) -> None:
    sync_playwright, expect = _browser()
    with sync_playwright() as playwright:
        browser, page, errors, hosts = _open(playwright, server.url)
        try:
            page.wait_for_selector("#app:not([hidden])")
            assert "Pneumonia-Viral" in page.inner_text("#model-name")
            assert "Not a diagnostic device; a clinician decides." in page.inner_text("aside")
            assert "95 % CI" in page.inner_text("#model-results")
            page.set_input_files("#files", [str(p) for p in uploads])
            expect(page.locator("#progress")).to_have_text(re.compile("^2 of 2"), timeout=30_000)
            rows = page.locator("#worklist tbody tr")
            assert rows.count() == 2
            table = page.inner_text("#worklist")
            assert "image 1" in table and "image 2" in table
            content = page.content()
            assert all(p.stem not in content for p in uploads)  # file names are never shown
            # The selected image: X-ray, heatmap, probability bars with the threshold marked, one-line result.
            page.locator("#worklist tbody tr", has_text="image 1").click()
            assert page.locator("#xray").is_visible() and page.locator("#heat").is_visible()
            assert page.get_attribute("#heat", "src").startswith("data:image/png;base64,")
            assert page.locator("#bars .bar").count() == 6 and page.locator("#bars .threshold").count() == 0
            assert page.inner_text("#summary").startswith("Most likely") and page.inner_text("#status") == "Status: ok"
            page.fill("#opacity", "30")
            page.dispatch_event("#opacity", "input")
            assert page.eval_on_selector("#heat", "e => e.style.opacity") == "0.3"
            page.uncheck("#heat-toggle")
            assert page.locator("#heat").is_hidden()
            page.check("#heat-toggle")
            # Worklist: highest probability of abnormality first; the header sorts both ways.
            def column(i: int) -> list[str]:
                return [rows.nth(r).locator("td").nth(i).inner_text() for r in range(rows.count())]
            values = [float(v) for v in column(3)]
            assert values == sorted(values, reverse=True)
            page.click("th button[data-sort='abnormal']")
            assert [float(v) for v in column(3)] == sorted(values)
            page.click("th button[data-sort='index']")
            assert column(1) == ["image 1", "image 2"]
            rows.nth(0).focus()
            page.keyboard.press("ArrowDown")
            assert page.inner_text("#viewer-index") == "2"  # keyboard moves through the worklist
            with page.expect_download() as download:
                page.click("#csv")
            lines = Path(download.value.path()).read_text().splitlines()
            assert lines[0].startswith("image,predicted,abnormal_probability,prob_Covid-19,prob_Emphysema")
            assert len(lines) == 3
            page.click("th button[data-sort='abnormal']")
            # The screenshot shows an image whose heatmap has evidence, when the tiny model found any.
            for label in ("image 1", "image 2"):
                page.locator("#worklist tbody tr", has_text=label).click()
                if not page.inner_text("#heat-note").startswith("no positive evidence"):
                    break
            assert page.evaluate("document.documentElement.scrollWidth") <= 1366  # one screen wide
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            assert not errors, errors
            assert set(hosts) <= {f"127.0.0.1:{server.port}", "data:"}, hosts  # nothing from outside
        finally:
            browser.close()


def test_login_form_keeps_the_token_in_memory(binary_onnx: Path, uploads: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    sync_playwright, expect = _browser()
    (tmp_path / "token").write_text(TOKEN)
    live = Server(binary_onnx, "--token-file", str(tmp_path / "token"))
    try:
        with sync_playwright() as playwright:
            browser, page, errors, _ = _open(playwright, live.url)
            try:
                page.wait_for_selector("#login:not([hidden])")
                page.fill("#token", "wrong-token-wrong-token")
                page.press("#token", "Enter")
                expect(page.locator("#login-error")).not_to_be_empty()
                page.fill("#token", TOKEN)
                page.press("#token", "Enter")
                page.wait_for_selector("#app:not([hidden])")
                page.set_input_files("#files", [str(uploads[1])])
                expect(page.locator("#progress")).to_have_text(re.compile("^1 of 1"), timeout=30_000)
                # A binary model: two bars, the operating threshold marked on the positive class.
                assert page.locator("#bars .bar").count() == 2 and page.locator("#bars .threshold").count() == 1
                assert "threshold" in page.inner_text("#summary") and "threshold" in page.inner_text("#bars")
                stored = page.evaluate("[document.cookie, localStorage.length, sessionStorage.length]")
                assert stored == ["", 0, 0] and TOKEN not in page.url
                assert [e for e in errors if "401" not in e] == []  # the wrong token's 401 is the only error
            finally:
                browser.close()
    finally:
        live.stop()
