"""Fixtures for the serve tests: the shared tiny trained run exported once, images good and bad, clients."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from dicom_writer import write_dicom


@pytest.fixture(scope="session")
def served_onnx(trained_run: tuple[Path, Any]) -> Path:
    """The shared run (tests/conftest.py) as ``medlite serve RUN`` sees it: exported to RUN/export first."""
    from medlite.serve.runner import resolve_model

    run, _ = trained_run
    onnx = resolve_model(run)
    assert onnx == run / "export" / "model.onnx" and onnx.is_file()
    return onnx


@pytest.fixture(scope="session")
def make_client(served_onnx: Path) -> Callable[..., Any]:
    """``make_client(**ServeSettings fields) -> TestClient`` on the exported run."""
    from fastapi.testclient import TestClient

    from medlite.serve.app import create_app
    from medlite.serve.settings import ServeSettings

    def _make(**settings: Any) -> TestClient:
        return TestClient(create_app(ServeSettings(model=served_onnx, **settings)))

    return _make


def _phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    from medlite.data.synthetic import generate_phantom

    return generate_phantom("Pneumonia-Bacterial", size, np.random.default_rng(seed))[0]  # float (S, S) [0, 1]


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _bomb_png(side: int = 20000) -> bytes:
    """A real decompression bomb: a valid 8-bit gray PNG of side x side zeros, about 0.4 MB compressed."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0 + a row of zeros
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Named uploads: good ones (png, png16, rgba, jpeg, dicom, mono1) and bad ones."""
    folder = tmp_path_factory.mktemp("serve-images")
    img = _phantom(64)
    u8 = np.rint(img * 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", u8)
    assert ok
    rgba = np.dstack([u8, u8, u8, np.full_like(u8, 128)])
    pixels = np.rint(img * 4095).astype(np.uint16)
    write_dicom(folder / "m2.dcm", pixels)
    write_dicom(folder / "m1.dcm", 4095 - pixels, photometric="MONOCHROME1")
    write_dicom(folder / "frames.dcm", np.stack([pixels, pixels]), frames=2)
    write_dicom(folder / "ybr.dcm", pixels, photometric="YBR_FULL")
    return {
        "png": _png(u8), "png16": _png(np.rint(img * 65535).astype(np.uint16)), "rgba": _png(rgba),
        "jpeg": jpeg.tobytes(), "dicom": (folder / "m2.dcm").read_bytes(), "mono1": (folder / "m1.dcm").read_bytes(),
        "empty": b"", "truncated_jpeg": jpeg.tobytes()[: len(jpeg) // 2], "text": b"patient notes, not an image\n",
        "bmp": cv2.imencode(".bmp", u8)[1].tobytes(), "multiframe": (folder / "frames.dcm").read_bytes(),
        "ybr": (folder / "ybr.dcm").read_bytes(), "bomb": _bomb_png(),
        "garbage_png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    }
