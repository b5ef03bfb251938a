"""Overlays: maps back on the original geometry (pad / crop / stretch), windowing, colours, PNG output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medlite.data.preprocess import PreprocessConfig, preprocess_image
from medlite.errors import MedliteError
from medlite.explain.grid import Panel, save_grid
from medlite.explain.overlay import colorize, overlay, save_png, to_original_geometry, window


def _scene(h: int = 60, w: int = 100) -> np.ndarray:
    """float32 (h, w): smooth ramp background with a bright off-centre disc (the 'lesion')."""
    img = np.tile(np.linspace(0.1, 0.3, w, dtype=np.float32), (h, 1))
    cv2.circle(img, (int(w * 0.65), int(h * 0.4)), int(h * 0.15), 0.95, -1)
    return img


@pytest.mark.parametrize("shape", [(60, 100), (100, 60)])
@pytest.mark.parametrize("resize", ["pad", "stretch"])
def test_map_returns_to_original_geometry(shape, resize) -> None:
    img = _scene(*shape)
    cfg = PreprocessConfig(size=64, resize=resize)
    model_view = preprocess_image(img, cfg).astype(np.float32) / 255.0  # a "map" that is the input itself
    back = to_original_geometry(model_view, img.shape, resize)
    assert back.shape == img.shape
    assert np.abs(back - img).mean() < 0.03  # same content at the same place (interpolation blur only)
    lesion = img > 0.9
    assert back[lesion].mean() > 0.85 and back[~lesion].mean() < 0.35


def test_crop_inverse_zeroes_what_the_model_never_saw() -> None:
    img = _scene(60, 100)
    cfg = PreprocessConfig(size=48, resize="crop")
    back = to_original_geometry(preprocess_image(img, cfg).astype(np.float32) / 255.0, img.shape, "crop")
    assert back.shape == (60, 100)
    assert np.all(back[:, :20] == 0) and np.all(back[:, 80:] == 0)
    assert np.abs(back[:, 20:80] - img[:, 20:80]).mean() < 0.03


def test_geometry_rejects_bad_input() -> None:
    with pytest.raises(MedliteError, match="square"):
        to_original_geometry(np.zeros((4, 5)), (10, 10), "pad")
    with pytest.raises(MedliteError, match="resize"):
        to_original_geometry(np.zeros((4, 4)), (10, 10), "zoom")


def test_window_handles_any_range_and_shape() -> None:
    raw = np.linspace(1000, 4000, 200, dtype=np.float32).reshape(1, 10, 20)  # 12-bit-like, (1, H, W)
    out = window(raw)
    assert out.shape == (10, 20) and out.dtype == np.float32
    assert out.min() == 0 and out.max() == 1
    assert np.all(window(np.full((3, 3), 7.0)) == 0)


def test_overlay_is_rgb_uint8_and_alpha_blends() -> None:
    img = _scene()
    heat = np.zeros_like(img)
    heat[:10, :10] = 1.0
    out = overlay(img, heat, colormap="jet", alpha=0.5)
    assert out.shape == (60, 100, 3) and out.dtype == np.uint8
    gray = np.round(window(img) * 255)
    assert np.abs(overlay(img, heat, alpha=0.0).astype(float) - gray[..., None]).max() <= 1
    hot = colorize(np.ones((1, 1)), "jet")[0, 0].astype(float)
    assert np.allclose(out[5, 5], 0.5 * gray[5, 5] + 0.5 * hot, atol=1)
    with pytest.raises(MedliteError, match="colormap"):
        overlay(img, heat, colormap="not-a-map")
    with pytest.raises(MedliteError, match="to_original_geometry"):
        overlay(img, heat[:30])


def test_png_and_grid_written(tmp_path) -> None:
    rgb = overlay(_scene(), np.random.default_rng(0).random((60, 100)))
    path = save_png(tmp_path / "a" / "o.png", rgb)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), rgb)
    base = np.round(window(_scene()) * 255).astype(np.uint8)
    rows = [("model-a", [Panel(rgb, "p=0.9"), Panel(rgb)]), ("model-b", [Panel(rgb), Panel(rgb)])]
    grid = save_grid(tmp_path / "grid.png", base, rows, ["gradcam", "scorecam"], title="x.png")
    assert cv2.imread(str(grid)).shape[1] > 300
    with pytest.raises(MedliteError, match="one panel per column"):
        save_grid(tmp_path / "bad.png", base, [("m", [Panel(rgb)])], ["gradcam", "scorecam"])
