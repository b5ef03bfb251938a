from __future__ import annotations

import math
import time

import pytest
import torch
from pydantic import ValidationError

from medlite.data.augment import SimCLRViews, XrayAugment, XrayAugmentConfig
from medlite.errors import MedliteError

IDENTITY = XrayAugmentConfig(
    crop_scale=(1.0, 1.0),
    rotation_deg=0.0,
    hflip_p=0.0,
    brightness=0.0,
    contrast=0.0,
    jitter_p=0.0,
    gamma=(1.0, 1.0),
    blur_p=0.0,
    blur_sigma=(0.1, 1.0),
    noise_std=0.0,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 4, c: int = 1, h: int = 48, w: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0.1, 0.9] (so gamma/contrast never saturate by accident)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (0.1 + 0.8 * x).expand(b, c, h, w).contiguous()


def _blob(h: int, w: int, cy: float, cx: float, sigma: float = 1.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))[None, None]


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    m = img[0, 0]
    yy, xx = torch.meshgrid(torch.arange(m.shape[0]), torch.arange(m.shape[1]), indexing="ij")
    return float((m * yy).sum() / m.sum()), float((m * xx).sum() / m.sum())


def test_presets_and_defaults_follow_methods() -> None:
    cfg = XrayAugmentConfig()
    assert cfg.crop_scale == (0.35, 1.0) and cfg.rotation_deg == 10.0 and cfg.hflip_p == 0.5
    assert cfg.noise_std == 0.0 and cfg.blur_p == 0.2
    sup, ssl = XrayAugmentConfig.supervised(), XrayAugmentConfig.simclr()
    assert sup.crop_scale == (0.7, 1.0) and sup.rotation_deg == 7.0 and sup.blur_p == 0.0
    assert ssl.noise_std == 0.01 and ssl.crop_scale == (0.35, 1.0)
    assert not any(k in XrayAugmentConfig.model_fields for k in ("hue", "saturation", "grayscale"))
    with pytest.raises(ValidationError):
        cfg.hflip_p = 0.0  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    "kw",
    [
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.9, 0.5)},
        {"hflip_p": 1.5},
        {"brightness": -0.1},
        {"gamma": (0.0, 1.0)},
        {"noise_std": -1.0},
        {"hue": 0.1},
    ],
)
def test_config_rejects_bad_values(kw: dict) -> None:
    with pytest.raises(ValidationError):
        XrayAugmentConfig(**kw)


def test_bad_input_raises_one_line_error() -> None:
    with pytest.raises(MedliteError, match=r"\(B, C, H, W\)"):
        XrayAugment(XrayAugmentConfig())(torch.rand(8, 8))
    with pytest.raises(MedliteError, match="float"):
        XrayAugment(XrayAugmentConfig())(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_cfg_none_is_identity_fast_path() -> None:
    x = _images()
    assert XrayAugment(None)(x) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 3])
def test_shape_dtype_range_preserved(dtype: torch.dtype, c: int) -> None:
    x = torch.rand(5, c, 40, 56, generator=_gen(), dtype=dtype)
    out = XrayAugment(XrayAugmentConfig.simclr())(x, generator=_gen(1))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_identity_config_returns_input() -> None:
    x = torch.rand(3, 1, 37, 53, generator=_gen())  # odd, non-square: the identity grid must still be exact
    out = XrayAugment(IDENTITY)(x, generator=_gen())
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_deterministic_with_generator_and_global_seed() -> None:
    aug, x = XrayAugment(XrayAugmentConfig.simclr()), _images(8)
    torch.testing.assert_close(aug(x, generator=_gen(7)), aug(x, generator=_gen(7)), atol=0, rtol=0)
    assert not torch.allclose(aug(x, generator=_gen(7)), aug(x, generator=_gen(8)))
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, aug(x), atol=0, rtol=0)


def test_hflip_p1_flips_exactly() -> None:
    x = torch.rand(2, 1, 31, 44, generator=_gen())
    out = XrayAugment(IDENTITY.model_copy(update={"hflip_p": 1.0}))(x, generator=_gen())
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("h,w", [(65, 65), (65, 97)])
def test_rotation_moves_offcentre_dot_counter_clockwise(h: int, w: int) -> None:
    cy, cx, d = (h - 1) / 2, (w - 1) / 2, 20.0
    x = _blob(h, w, cy, cx + d)
    aug = XrayAugment(IDENTITY.model_copy(update={"rotation_deg": 30.0}))
    params = aug.sample_params(x, _gen(5))
    assert 3.0 < abs(float(params.angle_deg[0])) <= 30.0
    angle = math.radians(float(params.angle_deg[0]))
    y, xx = _centroid(aug.apply(x, params))
    # Positive angle = counter-clockwise on screen: with y pointing down the dot moves up (smaller y).
    assert abs(xx - (cx + d * math.cos(angle))) < 1.0
    assert abs(y - (cy - d * math.sin(angle))) < 1.0


def test_crop_scale_zooms_centred_square() -> None:
    h = w = 64
    x = torch.zeros(32, 1, h, w)
    x[..., 28:36, 28:36] = 1.0  # centred square of half-size 0.125 in normalised units
    aug = XrayAugment(IDENTITY.model_copy(update={"crop_scale": (0.25, 0.25)}))
    params = aug.sample_params(x, _gen(2))
    lin = params.theta[:, :, :2]
    torch.testing.assert_close(torch.linalg.det(lin).abs(), torch.full((32,), 0.25), atol=1e-5, rtol=0)
    out = aug.apply(x, params)
    # Samples whose crop fully contains the square show it with 1 / 0.25 = 4x its area.
    sx, sy, tx, ty = lin[:, 0, 0], lin[:, 1, 1], params.theta[:, 0, 2], params.theta[:, 1, 2]
    inside = ((tx.abs() + 0.125) / sx <= 0.95) & ((ty.abs() + 0.125) / sy <= 0.95)
    assert inside.sum() >= 3
    ratio = out[inside].sum(dim=(1, 2, 3)) / x[inside].sum(dim=(1, 2, 3))
    torch.testing.assert_close(ratio, torch.full_like(ratio, 4.0), atol=0.1, rtol=0)


def test_brightness_shifts_mean() -> None:
    x = _images(16)
    cfg = IDENTITY.model_copy(update={"brightness": 0.2, "jitter_p": 1.0})
    aug = XrayAugment(cfg)
    params = aug.sample_params(x, _gen(4))
    out = aug.apply(x, params)
    assert ((params.brightness >= 0.8) & (params.brightness <= 1.2)).all()
    expected = (x * params.brightness.view(-1, 1, 1, 1)).clamp(0, 1).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), expected, atol=1e-5, rtol=0)
    assert (out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() > 0.02


def test_contrast_keeps_mean_and_gamma_changes_values() -> None:
    x = _images(8)
    out = XrayAugment(IDENTITY.model_copy(update={"contrast": 0.2, "jitter_p": 1.0}))(x, generator=_gen())
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    assert not torch.allclose(out.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)))
    rgb = torch.cat([_images(8, seed=1), _images(8, seed=2), _images(8, seed=3)], dim=1)  # distinct channels
    aug = XrayAugment(IDENTITY.model_copy(update={"contrast": 0.2, "jitter_p": 1.0}))
    params = aug.sample_params(rgb, _gen())
    c, m = params.contrast.view(-1, 1, 1, 1), rgb.mean(dim=(1, 2, 3), keepdim=True)  # one mean per image
    torch.testing.assert_close(aug.apply(rgb, params), (m + c * (rgb - m)).clamp(0, 1), atol=1e-5, rtol=0)
    aug = XrayAugment(IDENTITY.model_copy(update={"gamma": (0.5, 2.0)}))
    params = aug.sample_params(x, _gen())
    torch.testing.assert_close(aug.apply(x, params), x.pow(params.gamma.view(-1, 1, 1, 1)), atol=1e-5, rtol=0)


def test_blur_reduces_high_frequency_energy_and_scales_with_size() -> None:
    x = torch.rand(4, 1, 64, 64, generator=_gen())
    # sigma 3-6 px at 224 px = 0.86-1.7 px at 64 px
    aug = XrayAugment(IDENTITY.model_copy(update={"blur_p": 1.0, "blur_sigma": (3.0, 6.0)}))
    params = aug.sample_params(x, _gen())
    assert ((params.blur_sigma >= 3 * 64 / 224) & (params.blur_sigma <= 6 * 64 / 224)).all()
    out = aug.apply(x, params)

    def hf(t: torch.Tensor) -> torch.Tensor:  # energy of the discrete Laplacian per sample
        c = t[..., 1:-1, 1:-1]
        lap = 4 * c - t[..., :-2, 1:-1] - t[..., 2:, 1:-1] - t[..., 1:-1, :-2] - t[..., 1:-1, 2:]
        return lap.pow(2).mean(dim=(1, 2, 3))

    ratio = hf(out) / hf(x)
    assert (ratio < 0.5).all()
    assert torch.equal(ratio.argsort(), params.blur_sigma.argsort(descending=True))  # more blur, less detail
    torch.testing.assert_close(out.mean(), x.mean(), atol=1e-3, rtol=0)  # a normalised kernel keeps the mean
    big = aug.sample_params(torch.rand(4, 1, 448, 448), _gen())
    torch.testing.assert_close(big.blur_sigma, params.blur_sigma * 7, rtol=1e-5, atol=0)


def test_noise_is_shared_across_channels() -> None:
    x = _images(2, c=3)
    out = XrayAugment(IDENTITY.model_copy(update={"noise_std": 0.05}))(x, generator=_gen())
    assert (out - x).abs().mean() > 0.01
    torch.testing.assert_close(out[:, 0], out[:, 2], atol=0, rtol=0)


def test_per_sample_params_differ_and_channels_share_them() -> None:
    x = _images(1, c=3).expand(8, 3, 48, 48).contiguous()  # one image repeated
    out = XrayAugment(XrayAugmentConfig.simclr())(x, generator=_gen())
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(8) * 1e9).min() > 1e-3  # every pair of samples differs
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=0, rtol=0)  # grey in, grey out


def test_simclr_views_differ_and_default_to_simclr_preset() -> None:
    views = SimCLRViews()
    assert views.augment.cfg == XrayAugmentConfig.simclr()
    x = _images(4)
    v1, v2 = views(x, generator=_gen())
    assert v1.shape == v2.shape == x.shape
    assert (v1 - v2).abs().flatten(1).mean(dim=1).min() > 1e-3
    w1, w2 = views(x, generator=_gen())
    torch.testing.assert_close((v1, v2), (w1, w2), atol=0, rtol=0)


def test_channels_last_input_matches_contiguous() -> None:
    x = _images(4, c=3)
    xl = x.contiguous(memory_format=torch.channels_last)
    aug = XrayAugment(XrayAugmentConfig.simclr())
    out_l = aug(xl, generator=_gen(9))
    assert out_l.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_l, aug(x, generator=_gen(9)), atol=1e-5, rtol=0)


def test_speed_64_images_128px_cpu() -> None:
    aug, x = XrayAugment(XrayAugmentConfig.simclr()), torch.rand(64, 1, 128, 128, generator=_gen())
    aug(x, generator=_gen())  # warm-up
    start = time.perf_counter()
    aug(x, generator=_gen(1))
    assert time.perf_counter() - start < 2.0
