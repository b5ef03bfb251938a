"""Rendering of one procedural chest-radiograph phantom (the engine behind :mod:`medlite.data.synthetic`).

A phantom is drawn in a canonical posteroanterior frame in normalised coordinates (x rightwards, y downwards,
both in [0, 1]; the patient's right lung is on the image left). Anatomy is a sum of soft implicit shapes
(body, lungs, heart, spine, ribs as a periodic band field) and a few OpenCV drawings (clavicles, vessels,
streaks, nodules), composed as X-ray attenuation: dense = bright. A finding adds attenuation inside the
lungs and yields its lesion mask. The film is then posed (rotation / shift / scale with ``cv2.warpAffine``,
masks warped alongside), given detector noise and a random contrast curve, and renormalised to a global
mean and standard deviation drawn from one class-independent distribution.

Everything is vectorised over the (S, S) pixel grid; a 128 px phantom costs a few milliseconds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["FINDINGS", "Phantom", "render"]

FINDINGS = ("normal", "bacterial", "viral", "pneumonia", "covid", "tb", "emphysema")

# Body half-width (image-width units) against height: neck, shoulders, chest, upper abdomen.
_BODY_OUTLINE = ([0.0, 0.05, 0.1, 0.18, 0.3, 1.0], [0.1, 0.11, 0.3, 0.44, 0.47, 0.44])


class Phantom(NamedTuple):
    """One rendered phantom: image float32 (S, S) in [0, 1]; lesion, body and lung masks bool (S, S)."""

    image: np.ndarray
    lesion: np.ndarray
    body: np.ndarray
    lungs: np.ndarray


# --------------------------------------------------------------------------------------------- geometry
@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)``, each float32 (S, S) in (0, 1); x grows rightwards, y downwards."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _soft(inside: np.ndarray, edge: float) -> np.ndarray:
    """Soft mask in [0, 1] from a signed inside-distance (width units, > 0 inside); ramp ``edge`` wide."""
    return np.clip(inside / edge + 0.5, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse boundary (> 0 inside), in image-width units."""
    return (1.0 - np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)) * min(ax, ay)


def _pt(u: float, v: float, size: int) -> tuple[int, int]:
    """Normalised (u, v) -> OpenCV point in 1/16 pixels (drawn with ``shift=4``: sub-pixel accuracy)."""
    return int(round(u * size * 16)), int(round(v * size * 16))


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), max(sigma_px, 0.3))


# --------------------------------------------------------------------------------------------- anatomy
def _anatomy_params(rng: np.random.Generator, finding: str) -> dict[str, float]:
    """Random anatomy (image-width units). Emphysema shifts lung size, diaphragm, air content and heart."""
    emph = finding == "emphysema"
    p = {
        "apex": rng.uniform(0.1, 0.14) - (rng.uniform(0.015, 0.03) if emph else 0.0),
        "base": rng.uniform(0.70, 0.76) + (rng.uniform(0.04, 0.07) if emph else 0.0),
        "width": rng.uniform(0.34, 0.38) + (rng.uniform(0.015, 0.03) if emph else 0.0),
        "medial": rng.uniform(0.065, 0.085),
        "dome": rng.uniform(0.0, 0.02) if emph else rng.uniform(0.07, 0.11),
        "air": rng.uniform(0.32, 0.38) + (rng.uniform(0.07, 0.12) if emph else 0.0),
        "tissue": rng.uniform(0.50, 0.58),
        "body": rng.uniform(0.95, 1.04),
        "heart_w": rng.uniform(0.14, 0.17) * (0.75 if emph else 1.0),
        "heart_h": rng.uniform(0.13, 0.16),
        "heart_x": rng.uniform(0.04, 0.065),
        "rib_amp": rng.uniform(0.06, 0.1),
        "rib_gap": rng.uniform(0.044, 0.05) * (1.12 if emph else 1.0),
        "rib_phase": rng.uniform(0.0, 1.0),
        "vessels": rng.uniform(0.06, 0.08) * (0.35 if emph else 1.0),
    }
    p["heart_y"] = p["base"] - 0.75 * p["heart_h"] - rng.uniform(0.0, 0.02)
    return p


def _lung_fields(x: np.ndarray, y: np.ndarray, p: dict[str, float]) -> np.ndarray:
    """Soft mask float32 (S, S) of both lung fields, before the heart is cut out."""
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):
        d = side * (x - 0.5)  # distance from the midline towards this lung's chest wall
        t = np.clip((y - p["apex"]) / (p["base"] - p["apex"]), 0.0, 1.0)
        grow = np.sqrt(np.minimum(t / 0.45, 1.0))  # the lung widens over its top half: a rounded apex
        medial = p["medial"] + 0.07 * (1.0 - grow)
        lateral = 0.14 + (p["width"] - 0.14) * grow + 0.015 * t
        base = p["base"] - (0.015 if side < 0 else 0.0)  # the right hemidiaphragm sits a little higher
        # Domed hemidiaphragm peaking mid-lung, reaching the base at a sharp lateral costophrenic angle.
        dome = base - p["dome"] * np.sqrt(np.clip(1.0 - ((d - 0.17) / 0.23) ** 2, 0.0, 1.0))
        inside = np.minimum(np.minimum(d - medial, lateral - d), np.minimum(dome - y, y - p["apex"]))
        lungs = np.maximum(lungs, _soft(inside, 0.01))
    return lungs


def _bones(x: np.ndarray, y: np.ndarray, lungs: np.ndarray, p: dict[str, float], size: int) -> np.ndarray:
    """Ribs, clavicles and spine as added attenuation, float32 (S, S)."""
    d = np.abs(x - 0.5)
    # Ribs are a periodic band pattern along arched centre lines, far cheaper than drawing each rib:
    # posterior ribs rise slightly from the spine then sweep down to the chest wall; anterior ribs run
    # from the chest wall down towards the sternum and fade out at the (invisible) costal cartilage.
    u = y - 1.5 * (d - 0.1) ** 2
    post = (u - 0.35 * (u - 0.1) ** 2) / p["rib_gap"] + p["rib_phase"]  # rib spacing widens downwards
    ant = (y + 0.3 * d) / (1.25 * p["rib_gap"]) + p["rib_phase"]
    band = np.clip((np.cos(2 * np.pi * post) - 0.3) / 0.7, 0, 1) ** 0.7
    band += 0.5 * np.clip((np.cos(2 * np.pi * ant) - 0.4) / 0.6, 0, 1) * _soft(d - 0.14, 0.04)
    span = _soft(y - p["apex"] + 0.05, 0.03) * _soft(p["base"] - y, 0.08) * _soft(d - 0.04, 0.01)
    # Ribs stand out against lung air and blend into soft tissue elsewhere.
    bones = (p["rib_amp"] * band * span * (0.1 + 0.9 * lungs)).astype(np.float32)
    for side in (-1.0, 1.0):  # clavicles: bars from the sternal notch out over the lung apices
        a = _pt(0.5 + side * 0.05, p["apex"] + 0.1, size)
        b = _pt(0.5 + side * 0.36, p["apex"] + 0.03, size)
        cv2.line(bones, a, b, 0.1, max(1, round(0.025 * size)), cv2.LINE_8, 4)
    spine = _soft(0.035 - d, 0.01) * (0.8 + 0.2 * np.cos(2 * np.pi * y / 0.055))
    return _blur(bones, 0.005 * size) + (0.05 * spine).astype(np.float32)


def _fan(
    rng: np.random.Generator,
    hila: np.ndarray,
    n: int,
    spread: float,
    steps: tuple[float, float],
    segments: int,
    turn: float,
) -> np.ndarray:
    """Random polylines fanning out laterally from the hila: float (2 * n, segments + 1, 2) normalised points.

    Args:
        hila: (2, 2) the image-left and image-right hilum (u, v); lines from hilum 0 point left, from 1 right.
        n: lines per hilum; spread: half-angle of the fan (radians); steps: (min, max) segment length;
        segments: segments per line; turn: max random bend between consecutive segments (radians).
    """
    side = np.repeat([np.pi, 0.0], n)[:, None]
    bends = rng.uniform(-turn, turn, (2 * n, segments))
    bends[:, 0] = 0.0
    ang = side + rng.uniform(-spread, spread, (2 * n, 1)) + np.cumsum(bends, 1)
    step = rng.uniform(*steps, (2 * n, segments))
    start = np.repeat(hila, n, axis=0)[:, None, :]
    delta = np.cumsum(np.stack([step * np.cos(ang), step * np.sin(ang)], -1), 1)
    return np.concatenate([start, start + delta], 1)


def _draw_lines(canvas: np.ndarray, pts: np.ndarray, value: float, thickness: int) -> None:
    """Draw segments ``pts[:, 0] -> pts[:, 1]`` (float (N, 2, 2), normalised) onto ``canvas`` in one call."""
    size = canvas.shape[0]
    cv2.polylines(
        canvas, list(np.round(pts * size * 16).astype(np.int32)), False, value, thickness, cv2.LINE_8, 4
    )


def _vessels(rng: np.random.Generator, p: dict[str, float], size: int) -> np.ndarray:
    """Branching hilar vessel markings, float32 (S, S) attenuation (to be restricted to the lungs)."""
    canvas = np.zeros((size, size), np.float32)
    hila = np.array([[0.38, rng.uniform(0.42, 0.48)], [0.62, rng.uniform(0.42, 0.48)]])
    for u, v in hila:
        cv2.ellipse(
            canvas, _pt(u, v, size), _pt(0.03, 0.05, size), 0, 0, 360, p["vessels"], -1, cv2.LINE_8, 4
        )
    lines = _fan(rng, hila, 16, 1.3, (0.04, 0.07), 4, 0.4)
    thick = max(1, round(size / 128))
    for seg in range(4):  # each vessel tapers (thinner, fainter) as it runs out to the periphery
        _draw_lines(canvas, lines[:, seg : seg + 2], p["vessels"] * 0.75**seg, thick + (seg == 0))
    return _blur(canvas, 0.004 * size)


# --------------------------------------------------------------------------------------------- findings
def _random_side(rng: np.random.Generator) -> float:
    """-1.0 (image-left lung) or +1.0 (image-right lung), as a Python float so arrays stay float32."""
    return -1.0 if rng.random() < 0.5 else 1.0


def _noise_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth random texture float32 (S, S): unit variance, correlation length ``sigma`` (width units)."""
    field = _blur(rng.standard_normal((size, size)).astype(np.float32), sigma * size)
    return field / (field.std() + 1e-6)


def _finding(
    finding: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, p: dict[str, float], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The lesion as (added attenuation float32 (S, S), lesion support float32 (S, S) in [0, 1])."""
    les = np.zeros((size, size), np.float32)
    support = np.zeros((size, size), np.float32)
    if finding == "bacterial":
        side = _random_side(rng)
        lobe = rng.integers(3)  # upper / middle (lingula) / lower
        cy = [rng.uniform(0.26, 0.36), rng.uniform(0.44, 0.52), rng.uniform(0.56, 0.64)][lobe]
        cx = 0.5 + side * rng.uniform(0.17, 0.26)
        blob = _soft(_ellipse(x, y, cx, cy, rng.uniform(0.09, 0.14), rng.uniform(0.08, 0.12)), 0.04)
        if lobe == 0:  # upper-lobe consolidation stops at the horizontal fissure: a sharp flat lower edge
            blob *= _soft(cy + rng.uniform(0.03, 0.07) - y, 0.008)
        texture = 0.88 + 0.12 * np.clip(_noise_field(rng, size, 0.03), -2, 2) / 2
        bronchi = np.zeros((size, size), np.float32)
        for _ in range(rng.integers(0, 4)):  # air bronchograms: lucent branching tubes inside the opacity
            ang = rng.uniform(0, 2 * np.pi)
            a, b = _pt(cx, cy, size), _pt(cx + 0.08 * np.cos(ang), cy + 0.08 * np.sin(ang), size)
            cv2.line(bronchi, a, b, 0.25, max(1, round(size / 128)), cv2.LINE_8, 4)
        les = rng.uniform(0.2, 0.32) * blob * (texture - _blur(bronchi, 0.003 * size))
        support = blob
    elif finding == "viral":
        canvas = np.zeros((size, size), np.float32)
        amp = rng.uniform(0.10, 0.16)
        hila = np.array([[0.38, rng.uniform(0.42, 0.5)], [0.62, rng.uniform(0.42, 0.5)]])
        streaks = _fan(rng, hila, int(rng.integers(18, 30)), 1.4, (0.03, 0.07), 3, 0.25)
        _draw_lines(canvas, streaks[:, 1:], amp, max(1, round(size / 80)))  # streaks start off the hilum
        # Reticulation: thin contour lines of a smooth random field form a net-like pattern.
        net = np.clip(1.0 - np.abs(_noise_field(rng, size, 0.015)) / 0.3, 0, 1) * amp * 0.6
        env = sum(
            np.exp(-(((x - 0.5 - s * 0.14) / 0.15) ** 2 + ((y - 0.47) / 0.2) ** 2)) for s in (-1.0, 1.0)
        )
        les = (_blur(canvas, 0.006 * size) + net) * np.clip(env * 1.3, 0, 1)
        support = _soft(env - 0.45, 0.2)
    elif finding == "covid":
        sides = [-1.0, 1.0] if rng.random() < 0.85 else [_random_side(rng)]
        haze = np.zeros((size, size), np.float32)
        for side in sides:  # peripheral, lower-zone patches hugging the lateral chest wall
            for _ in range(rng.integers(1, 4)):
                cx = 0.5 + side * rng.uniform(0.25, 0.32)
                cy = rng.uniform(0.5, 0.66)
                blob = _ellipse(x, y, cx, cy, rng.uniform(0.07, 0.11), rng.uniform(0.09, 0.14))
                haze = np.maximum(haze, _soft(blob, 0.06))
        patchy = 0.75 + 0.25 * np.clip(_noise_field(rng, size, 0.025), -2, 2) / 2
        les = rng.uniform(0.13, 0.2) * haze * patchy
        support = haze
    elif finding == "tb":
        sides = [-1.0, 1.0] if rng.random() < 0.5 else [_random_side(rng)]
        mask8 = np.zeros((size, size), np.uint8)
        for side in sides:
            for _ in range(rng.integers(3, 8)):  # small dense nodules clustered in the upper zone
                c = _pt(0.5 + side * rng.uniform(0.12, 0.3), rng.uniform(0.17, 0.38), size)
                r = int(rng.uniform(0.014, 0.03) * size * 16)
                amp = rng.uniform(0.25, 0.38)
                cv2.circle(les, c, r, amp, -1, cv2.LINE_8, 4)
                cv2.circle(mask8, c, r, 1, -1, cv2.LINE_8, 4)
        for _ in range(rng.integers(0, 3)):  # ring-shaped cavities: dense wall, lucent centre
            side = sides[int(rng.integers(len(sides)))]
            c = _pt(0.5 + side * rng.uniform(0.14, 0.27), rng.uniform(0.2, 0.36), size)
            r = rng.uniform(0.035, 0.055)
            cv2.circle(les, c, int(r * size * 16), -0.06, -1, cv2.LINE_8, 4)
            wall = max(1, round(rng.uniform(0.012, 0.02) * size))
            cv2.circle(les, c, int(r * size * 16), rng.uniform(0.25, 0.35), wall, cv2.LINE_8, 4)
            cv2.circle(mask8, c, int((r * size + wall / 2) * 16), 1, -1, cv2.LINE_8, 4)
        les = _blur(les, 0.004 * size)
        support = mask8.astype(np.float32)
    elif finding == "emphysema":
        support = np.ones((size, size), np.float32)  # the whole (hyperlucent) lung area; lungs are ANDed in
    return les.astype(np.float32), support.astype(np.float32)


# --------------------------------------------------------------------------------------------- rendering
def render(finding: str, size: int, rng: np.random.Generator) -> Phantom:
    """Render one phantom.

    Args:
        finding: one of :data:`FINDINGS` (``"pneumonia"`` picks bacterial or viral at random).
        size: side length in pixels.
        rng: the generator that fully determines the phantom.

    Returns:
        A :class:`Phantom`: image float32 (size, size) in [0, 1]; lesion, body, lung masks bool (size, size).
    """
    if finding not in FINDINGS:
        raise ValueError(f"finding: expected one of {FINDINGS}, got {finding!r}")
    if finding == "pneumonia":
        finding = "bacterial" if rng.random() < 0.5 else "viral"
    x, y = _grid(size)
    p = _anatomy_params(rng, finding)

    d = np.abs(x - 0.5)
    half_width = np.interp(y, *_BODY_OUTLINE).astype(np.float32) * p["body"]
    body = _soft(half_width - d, 0.025)
    heart = np.maximum(
        _soft(_ellipse(x, y, 0.5 + p["heart_x"], p["heart_y"], p["heart_w"], p["heart_h"]), 0.015),
        _soft(_ellipse(x, y, 0.545, p["apex"] + 0.2, 0.045, 0.035), 0.015),  # aortic knob
    )
    lungs = _lung_fields(x, y, p) * (1.0 - heart) * body
    # Lung air shows least where more tissue overlies it: lower zones and the periphery (chest wall, breasts).
    t = np.clip((y - p["apex"]) / (p["base"] - p["apex"]), 0.0, 1.0)
    air = p["air"] * (1.0 - 0.2 * t - 0.2 * np.clip(d / p["width"], 0, 1) ** 4) * lungs

    att = p["tissue"] * body * (0.8 + 0.2 * np.clip(1.0 - (d / 0.46) ** 2, 0, 1))  # thicker mid-chest
    att = att - air + _bones(x, y, lungs, p, size) * body + _vessels(rng, p, size) * lungs
    att -= 0.08 * _soft(0.015 - d, 0.006) * _soft(p["apex"] + 0.2 - y, 0.02)  # tracheal air column
    if rng.random() < 0.6:  # gastric air bubble under the left hemidiaphragm (image right)
        cy = p["base"] - 0.6 * p["dome"] + 0.045
        bubble = _soft(_ellipse(x, y, rng.uniform(0.64, 0.7), cy, rng.uniform(0.04, 0.06), 0.035), 0.015)
        att -= rng.uniform(0.1, 0.18) * bubble * _soft(cy + 0.012 - y, 0.004)  # flat air-fluid level below
    les, support = _finding(finding, rng, x, y, p, size)
    att += les * lungs

    # Random pose: the canonical film is rotated, shifted and scaled; masks travel with the image.
    m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-6, 6), rng.uniform(0.92, 1.06))
    m[:, 2] += rng.uniform(-0.04, 0.04, 2) * size
    lesion_f = support * (lungs > 0.5)
    stack = np.dstack([att, lesion_f, body, lungs]).astype(np.float32)
    stack = cv2.warpAffine(stack, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    img = stack[..., 0]

    # Acquisition: heel-effect gradient, detector noise, then a random contrast curve.
    img = img * (1.0 + rng.uniform(-0.06, 0.06) * (x - 0.5) + rng.uniform(-0.06, 0.06) * (y - 0.5))
    img = img + rng.uniform(0.008, 0.02) * _blur(rng.standard_normal((size, size)).astype(np.float32), 0.5)
    img = (img - img.min()) / (np.ptp(img) + 1e-6)
    img = img ** rng.uniform(0.8, 1.25)
    # Class-blind renormalisation: global mean and std are set to targets drawn from one distribution for
    # every class, so neither statistic can reveal the label.
    img = rng.uniform(0.41, 0.47) + rng.uniform(0.19, 0.23) * (img - img.mean()) / (img.std() + 1e-6)
    image = np.clip(img, 0.0, 1.0).astype(np.float32)
    body_m, lungs_m = stack[..., 2] > 0.5, stack[..., 3] > 0.5
    # Findings lie in the lungs by construction; the AND only removes interpolation slivers at the border.
    return Phantom(image, (stack[..., 1] > 0.5) & lungs_m & body_m, body_m, lungs_m)
