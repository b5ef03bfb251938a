"""Batched, chest-X-ray-safe tensor augmentations for supervised training and SimCLR views.

Everything runs on whole ``(B, C, H, W)`` batches on the batch's own device and dtype, with independent
parameters per sample (and the same parameters for every channel of a sample, so a grey image replicated to
RGB stays grey). Geometry — random resized crop, rotation and horizontal flip — is folded into one affine
matrix per sample and applied with a single ``F.affine_grid`` + ``F.grid_sample`` call; photometric ops are
per-sample tensor arithmetic; blur is a separable grouped convolution with one kernel per sample.

The op set follows SimCLR (Chen et al., ICML 2020, arXiv 2002.05709) adapted to radiographs as MoCo-CXR
(Sowrirajan et al., MIDL 2021) argues: hue, saturation and random grayscale are exact no-ops on a single-
channel film and are deliberately absent; crops and blur stay mild so the small region that carries a
finding is rarely cut out (METHODS.md §7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor, nn

from medlite.errors import MedliteError

#: Reference image side for ``blur_sigma``: sigmas are given in pixels of a 224 px image.
BLUR_REFERENCE_SIZE = 224
_LOG_ASPECT = (math.log(3 / 4), math.log(4 / 3))  # random-resized-crop aspect range (width / height)


class XrayAugmentConfig(BaseModel):
    """Parameters of :class:`XrayAugment` (defaults = the SimCLR chest-X-ray recipe of METHODS.md §7).

    Attributes:
        crop_scale: area fraction ``(lo, hi)`` of a random resized crop, in ``(0, 1]``; the aspect ratio is
            drawn log-uniformly from 3/4-4/3 (narrowed when needed so the crop fits inside the image, so
            ``(1, 1)`` means "no crop"). The crop is resized back to the input size.
        rotation_deg: maximum absolute rotation in degrees (uniform in ``[-r, r]``, positive = counter-
            clockwise); corners that leave the image are filled with 0 (black, like film background).
        hflip_p: probability of a horizontal flip. Flips move the heart to the right side of the image: set
            0 for laterality-dependent labels (dextrocardia, left/right findings, side markers).
        brightness: multiplicative brightness factor drawn from ``[1 - b, 1 + b]`` (torchvision semantics).
        contrast: contrast factor drawn from ``[1 - c, 1 + c]``, blending each image with its own mean.
        jitter_p: probability that brightness and contrast are applied to a sample (together).
        gamma: range of the gamma exponent ``x ** g``, applied to every sample; ``(1, 1)`` disables it.
        blur_p: probability of a Gaussian blur.
        blur_sigma: blur sigma range in pixels *of a 224 px image*; it is scaled by ``min(H, W) / 224`` so the
            same config blurs a 64 px and a 512 px image by the same fraction of the field of view.
        noise_std: standard deviation of additive Gaussian noise on the [0, 1] intensity scale (0 = off).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    crop_scale: tuple[float, float] = (0.35, 1.0)
    rotation_deg: float = 10.0
    hflip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    jitter_p: float = 0.8
    gamma: tuple[float, float] = (0.8, 1.2)
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: float = 0.0

    @model_validator(mode="after")
    def _check_ranges(self) -> XrayAugmentConfig:
        def bad(name: str, value: object, allowed: str) -> ValueError:
            return ValueError(f"augment.{name}={value!r} is invalid: expected {allowed}")

        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise bad("crop_scale", self.crop_scale, "0 < lo <= hi <= 1")
        if not 0 <= self.rotation_deg <= 180:
            raise bad("rotation_deg", self.rotation_deg, "a value in [0, 180]")
        for name in ("hflip_p", "jitter_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, getattr(self, name), "a probability in [0, 1]")
        for name in ("brightness", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, getattr(self, name), "a value in [0, 1)")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise bad("gamma", self.gamma, "0 < lo <= hi")
        if not 0 <= self.blur_sigma[0] <= self.blur_sigma[1]:
            raise bad("blur_sigma", self.blur_sigma, "0 <= lo <= hi (pixels at 224 px)")
        if not self.noise_std >= 0:
            raise bad("noise_std", self.noise_std, "a value >= 0")
        return self

    @classmethod
    def supervised(cls) -> XrayAugmentConfig:
        """Milder preset for supervised training: crop area 0.7-1.0, rotation ±7°, no blur."""
        return cls(crop_scale=(0.7, 1.0), rotation_deg=7.0, blur_p=0.0)

    @classmethod
    def simclr(cls) -> XrayAugmentConfig:
        """SimCLR preset: the METHODS.md §7 chest-X-ray defaults plus Gaussian noise of std 0.01."""
        return cls(noise_std=0.01)


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one :class:`XrayAugment` call (all on the batch's device).

    Attributes:
        theta: ``(B, 2, 3)`` affine matrices mapping output to input coordinates in ``F.affine_grid``'s
            normalised [-1, 1] convention (crop, rotation and flip combined), dtype of the batch.
        brightness: ``(B,)`` multiplicative factors (1 = unchanged).
        contrast: ``(B,)`` blend factors towards the per-image mean (1 = unchanged).
        angle_deg: ``(B,)`` rotation angles in degrees, positive = counter-clockwise on screen (in ``theta``).
        gamma: ``(B,)`` exponents (1 = unchanged).
        blur_sigma: ``(B,)`` Gaussian sigmas in pixels of this batch's size; 0 = no blur for that sample.
        noise: ``(B, 1, H, W)`` additive noise shared by all channels, or ``None`` when ``noise_std == 0``.
    """

    theta: Tensor
    angle_deg: Tensor
    brightness: Tensor
    contrast: Tensor
    gamma: Tensor
    blur_sigma: Tensor
    noise: Tensor | None


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` float32 samples from U[lo, hi], drawn on the generator's device and moved to ``device``."""
    draw_device = gen.device if gen is not None else device
    u = torch.rand(n, generator=gen, device=draw_device, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(device)


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each sample of ``x`` (n, C, H, W) with its own sigma (n,) in pixels; reflect padding."""
    n, c, h, w = x.shape
    radius = min(max(1, math.ceil(3.0 * float(sigma.max()))), h - 1, w - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma.float().clamp_min(1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype).repeat_interleave(c, dim=0)  # (n*C, K)
    # One group per (sample, channel): every sample gets its own kernel in a single conv call per axis.
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    return y.reshape(n, c, h, w)


class XrayAugment(nn.Module):
    """Random crop/rotation/flip, brightness/contrast/gamma, blur and noise for batches of radiographs.

    Augmentation is applied on every call, in train and eval mode alike: the caller decides when to use
    it. ``XrayAugment(None)`` is an identity (returns its input unchanged), convenient for "no augmentation".
    Order: geometry -> brightness -> contrast -> gamma -> blur -> noise -> clamp to [0, 1].

    Randomness comes from the ``generator`` passed to :meth:`forward` (parameters are drawn on its device
    and moved to the batch's, so a generator on the batch's device is fastest) or torch's global RNG.

    Args:
        cfg: the augmentation parameters, or ``None`` for the identity.
    """

    def __init__(self, cfg: XrayAugmentConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg

    def sample_params(self, x: Tensor, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw per-sample parameters for batch ``x`` (B, C, H, W); see :class:`AugmentParams`.

        Raises:
            MedliteError: when ``x`` is not a floating-point 4-D tensor.
            ValueError: when the module is an identity (``cfg=None``).
        """
        if self.cfg is None:
            raise ValueError("XrayAugment(cfg=None) is an identity and has no parameters to sample")
        _check_input(x)
        cfg, (b, _, h, w), dev = self.cfg, x.shape, x.device

        def u(lo: float, hi: float) -> Tensor:
            return _uniform(lo, hi, b, generator, dev)

        # Random resized crop. Narrow the aspect range per sample so both sides fit (w, h <= 1): then a
        # crop of area 1 is always the whole image, and no rejection loop is needed.
        area = u(*cfg.crop_scale)
        log_lo = torch.maximum(torch.log(area), torch.tensor(_LOG_ASPECT[0], device=dev))
        log_hi = torch.minimum(-torch.log(area), torch.tensor(_LOG_ASPECT[1], device=dev))
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u(0.0, 1.0))
        # Crop half-sizes in normalised [-1, 1] units, which equal the crop's side fractions.
        half_w = torch.sqrt(area * aspect).clamp(max=1.0)
        half_h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (1 - half_w) * u(-1.0, 1.0)
        cy = (1 - half_h) * u(-1.0, 1.0)
        angle_deg = u(-cfg.rotation_deg, cfg.rotation_deg)
        flip = torch.where(u(0.0, 1.0) < cfg.hflip_p, -1.0, 1.0)
        jitter = u(0.0, 1.0) < cfg.jitter_p
        brightness = torch.where(jitter, u(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness), 1.0)
        contrast = torch.where(jitter, u(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast), 1.0)
        gamma = u(*cfg.gamma)
        blur = u(0.0, 1.0) < cfg.blur_p
        sigma = torch.where(blur, u(*cfg.blur_sigma) * (min(h, w) / BLUR_REFERENCE_SIZE), 0.0)

        # Rotate in pixel space, not in normalised space, so non-square images are not sheared:
        # input = D^-1 R D S u + c with D = diag(W, H) and S = diag(flip * half_w, half_h).
        # Sampling from R(angle) u shows the content rotated by -angle in (x right, y down) coordinates,
        # i.e. counter-clockwise by +angle on screen (torchvision's convention).
        angle = torch.deg2rad(angle_deg)
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx, sy = flip * half_w, half_h
        theta = torch.stack(
            [
                torch.stack([cos * sx, -sin * (h / w) * sy, cx], dim=1),
                torch.stack([sin * (w / h) * sx, cos * sy, cy], dim=1),
            ],
            dim=1,
        ).to(x.dtype)

        noise = None
        if cfg.noise_std > 0:
            draw_device = generator.device if generator is not None else dev
            noise = torch.randn(b, 1, h, w, generator=generator, device=draw_device, dtype=torch.float32)
            noise = (noise * cfg.noise_std).to(device=dev, dtype=x.dtype)
        return AugmentParams(theta, angle_deg, brightness, contrast, gamma, sigma, noise)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply ``params`` (from :meth:`sample_params` on a batch of this shape) to ``x`` (B, C, H, W).

        Returns:
            The augmented batch: same shape, dtype, device and memory format, values in [0, 1].
        """
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
        b, c, h, w = x.shape
        grid = F.affine_grid(params.theta, [b, c, h, w], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        def per_sample(v: Tensor) -> Tensor:
            return v.to(x.dtype).view(b, 1, 1, 1)

        out = (out * per_sample(params.brightness)).clamp(0.0, 1.0)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)  # one mean per image: all channels move together
        out = torch.lerp(mean, out, per_sample(params.contrast)).clamp(0.0, 1.0)
        if bool((params.gamma != 1).any()):
            out = out.pow(per_sample(params.gamma))
        blurred = (params.blur_sigma > 0).nonzero().flatten()
        if blurred.numel() > 0:
            # Only the selected samples pay for the convolution.
            out = out.index_copy(0, blurred, _gaussian_blur(out[blurred], params.blur_sigma[blurred]))
        if params.noise is not None:
            out = out + params.noise
        out = out.clamp(0.0, 1.0)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch.

        Args:
            x: float tensor (B, C, H, W) with intensities in [0, 1], *before* mean/std normalisation; any C
                (1 for grey, 3 for grey replicated to RGB), contiguous or channels_last.
            generator: source of randomness; ``None`` uses torch's global RNG.

        Returns:
            Tensor of the same shape, dtype, device and memory format, clamped to [0, 1].
        """
        if self.cfg is None:
            return x
        return self.apply(x, self.sample_params(x, generator))

    def extra_repr(self) -> str:
        return "identity" if self.cfg is None else repr(self.cfg)


class SimCLRViews(nn.Module):
    """Two independently augmented views of a batch, the positive pairs of NT-Xent.

    Args:
        cfg: augmentation parameters; ``None`` means :meth:`XrayAugmentConfig.simclr` (not the identity,
            which would make every positive pair trivial).
    """

    def __init__(self, cfg: XrayAugmentConfig | None = None) -> None:
        super().__init__()
        self.augment = XrayAugment(cfg if cfg is not None else XrayAugmentConfig.simclr())

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(v1, v2)``, each (B, C, H, W) in [0, 1], drawn with independent per-sample parameters."""
        return self.augment(x, generator), self.augment(x, generator)


def _check_input(x: Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise MedliteError(
            f"augment input must be a float tensor (B, C, H, W) in [0, 1]; got {x.dtype} {tuple(x.shape)}"
        )
