"""Post-hoc calibration of a classifier's logits, and the measures that judge it.

* **Temperature scaling** (Guo et al., ICML 2017): every logit is divided by one scalar ``T > 0`` fitted by
  minimising the negative log-likelihood (NLL) on the validation split. The arg-max class never changes, so
  accuracy and AUC stay exactly as they are; ``T`` is one number in ``run.json`` and one division in an ONNX
  graph.
* **Isotonic regression** (Zadrozny & Elkan, KDD 2002), the non-parametric alternative: per class, a
  monotone piecewise-linear map of the predicted probability, fitted one-vs-rest with scikit-learn's
  ``IsotonicRegression`` and renormalised so each row sums to 1 (binary: one map of ``p_1``, ``p_0 = 1 - p_1``).
  It can change the arg-max, ties probabilities and needs more validation data than one scalar.
* **Measures**: top-label expected calibration error (ECE) over 15 equal-width confidence bins, the multiclass
  Brier score and the NLL (:func:`calibration_summary`); reliability-diagram data and plot.

Conventions: logits are float (N, C >= 2) for softmax heads, or (N,) / (N, 1) for single-logit binary heads
(sigmoid); probabilities are (N, C >= 2) with rows summing to 1 (``[1 - p, p]`` for a single logit); labels
are int (N,) class indices. All arithmetic is float64 numpy / scipy / scikit-learn, no torch, so the
deployment path can apply a stored :class:`Calibrator`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_expit, log_softmax, softmax

from medlite.errors import MedliteError

__all__ = ["CALIBRATION_METHODS", "DEFAULT_CALIBRATION", "ECE_BINS", "Calibrator", "ReliabilityBins", "confidence_bins",
           "apply_temperature", "calibration_summary", "fit_isotonic", "fit_temperature", "logits_to_probs",
           "plot_reliability", "reliability_bins"]

ECE_BINS = 15
CALIBRATION_METHODS: tuple[str, ...] = ("temperature", "isotonic", "none")
# benchmarks/ood_gate.py (two phantom runs, test split, paired bootstrap): isotonic's ECE was not better than
# temperature scaling's beyond noise in either run and its Brier score was better in one; but it gave 10 and 1
# of 240 test images probability 0 for their true class (NLL 3x worse in the first run) and changed the
# predicted class of 26 and 44 images: a second classifier fitted on the validation split. Temperature scaling
# lowered the NLL significantly in both runs and cannot change a prediction.
DEFAULT_CALIBRATION = "temperature"
TEMPERATURE_BOUNDS = (1e-2, 1e2)  # T outside these means the validation logits carry no usable scale
_ROW_SUM_TOL = 1e-2  # as medlite.evaluate.metrics: loose enough for float16 softmax


# ----------------------------------------------------------------------------------------------- inputs
def _float_array(x: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MedliteError(f"{name}: cannot be read as a float array ({err})") from None


def _logits(logits: Any, name: str = "logits") -> np.ndarray:
    """float64 (N, C >= 2) or (N,) (single logit; (N, 1) is squeezed)."""
    arr = _float_array(logits, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] < 2):
        raise MedliteError(f"{name}: expected shape (N,), (N, 1) or (N, C >= 2), got {np.shape(logits)}")
    if arr.shape[0] == 0:
        raise MedliteError(f"{name}: no samples (N == 0)")
    if not np.isfinite(arr).all():
        raise MedliteError(f"{name}: contain NaN or inf")
    return arr


def _probs(probs: Any, name: str = "probs") -> np.ndarray:
    """float64 (N, C >= 2) in [0, 1], rows summing to 1 within :data:`_ROW_SUM_TOL`."""
    arr = _float_array(probs, name)
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] == 0:
        raise MedliteError(f"{name}: expected class probabilities of shape (N >= 1, C >= 2), got {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
        raise MedliteError(f"{name}: probabilities must be finite and lie in [0, 1]")
    row = int(np.argmax(np.abs(arr.sum(axis=1) - 1.0)))
    if abs(arr[row].sum() - 1.0) > _ROW_SUM_TOL:
        raise MedliteError(f"{name}: rows must sum to 1 (row {row} sums to {arr[row].sum():.4g})")
    return np.clip(arr, 0.0, 1.0)


def _labels(labels: Any, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise MedliteError(f"{name}: expected shape ({n},) to match the scores, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise MedliteError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= num_classes:
        raise MedliteError(f"{name}: class indices must lie in [0, {num_classes - 1}], found "
                           f"[{arr.min()}, {arr.max()}]")
    return arr


def _num_classes(z: np.ndarray) -> int:
    return 2 if z.ndim == 1 else int(z.shape[1])


# ------------------------------------------------------------------------------------ temperature scaling
def logits_to_probs(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Softmax (or, for a single logit, sigmoid as ``[1 - p, p]``) of ``logits / temperature``: float64 (N, C)."""
    z = _logits(logits)
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise MedliteError(f"temperature: must be a finite number > 0, got {temperature!r}")
    z = z / float(temperature)
    if z.ndim == 1:  # exp(log_expit(-z)) rather than 1 - sigmoid(z): keeps precision for large logits
        return np.stack([np.exp(log_expit(-z)), np.exp(log_expit(z))], axis=1)
    return softmax(z, axis=1)


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities float64 (N, C >= 2): ``softmax(logits / T)`` (sigmoid for a single logit)."""
    return logits_to_probs(logits, temperature)


def _nll_of_scale(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """Mean NLL of the logits multiplied by ``beta = 1 / T``."""
    if z.ndim == 1:
        sign = np.where(y == 1, 1.0, -1.0)
        return float(-np.mean(log_expit(sign * beta * z)))
    return float(-np.mean(log_softmax(beta * z, axis=1)[np.arange(len(y)), y]))


def fit_temperature(logits: Any, labels: Any, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    The NLL is convex in ``1 / T`` (a log-sum-exp of a linear function of it), hence unimodal in ``log T``,
    so a bounded Brent search over ``log T`` finds the global minimum without a learning rate or initial
    value (unlike the usual LBFGS on ``T`` itself, which can step to ``T <= 0``).

    Args:
        logits: float (N, C >= 2) or single-logit (N,) / (N, 1) validation logits.
        labels: int (N,) class indices (0/1 for a single logit).
        bounds: the search interval for ``T``; an optimum on its edge warns.

    Returns:
        ``T`` as a float; 1.0 when no temperature improves the NLL (e.g. every logit equal) and, with a
        warning, when every validation image is classified correctly (the NLL then keeps falling as
        ``T -> 0``: there is no minimum to find).
    """
    z = _logits(logits)
    y = _labels(labels, z.shape[0], _num_classes(z))
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise MedliteError(f"bounds: expected 0 < low < 1 < high, got {bounds}")
    predicted = (z > 0).astype(np.int64) if z.ndim == 1 else z.argmax(axis=1)
    if np.all(predicted == y):
        # Every image right: the NLL falls towards 0 as T -> 0, so "the best T" would only sharpen the model.
        warnings.warn("fit_temperature: every validation image is classified correctly, so the NLL has no "
                      "minimum; keeping T = 1", UserWarning, stacklevel=2)
        return 1.0
    res = minimize_scalar(lambda u: _nll_of_scale(z, y, math.exp(-u)), bounds=(math.log(lo), math.log(hi)),
                          method="bounded", options={"xatol": 1e-7})
    temperature = math.exp(float(res.x))
    if not _nll_of_scale(z, y, 1.0 / temperature) < _nll_of_scale(z, y, 1.0):
        return 1.0
    if min(abs(res.x - math.log(lo)), abs(res.x - math.log(hi))) < 1e-3:
        warnings.warn(f"fit_temperature: the optimum T = {temperature:.3g} lies on the search bound {bounds}; "
                      f"the validation logits may be perfectly separated or too few", UserWarning, stacklevel=2)
    return temperature


# --------------------------------------------------------------------------------------------- isotonic
def _isotonic_map(x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, target)
    return np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)


def fit_isotonic(logits: Any, labels: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest isotonic maps of the uncalibrated probabilities (Zadrozny & Elkan 2002).

    Args:
        logits: float (N, C >= 2) or single-logit (N,) validation logits.
        labels: int (N,) class indices.

    Returns:
        ``[(x, y), ...]``: the knots (ascending ``x``, non-decreasing ``y`` in [0, 1]) of one map per class,
        or of the positive class only for binary tasks (one- or two-logit); applied by linear interpolation,
        clipped at the ends, exactly as ``IsotonicRegression.predict``.
    """
    z = _logits(logits)
    y = _labels(labels, z.shape[0], _num_classes(z))
    p = logits_to_probs(z)
    columns = [1] if p.shape[1] == 2 else range(p.shape[1])
    return [_isotonic_map(p[:, c], (y == c).astype(np.float64)) for c in columns]


def _apply_isotonic(knots: list[tuple[np.ndarray, np.ndarray]], p: np.ndarray) -> np.ndarray:
    if p.shape[1] == 2:
        if len(knots) != 1:
            raise MedliteError(f"isotonic calibrator: a binary task needs 1 map, this one has {len(knots)}")
        p1 = np.interp(p[:, 1], *knots[0])
        return np.stack([1.0 - p1, p1], axis=1)
    if len(knots) != p.shape[1]:
        raise MedliteError(f"isotonic calibrator: fitted for {len(knots)} classes, got {p.shape[1]}")
    out = np.stack([np.interp(p[:, c], *knots[c]) for c in range(p.shape[1])], axis=1)
    total = out.sum(axis=1, keepdims=True)
    # Every one-vs-rest map can say 0 for a sample far from the validation data: no class is preferred then.
    return np.divide(out, total, out=np.full_like(out, 1.0 / out.shape[1]), where=total > 0)


# ------------------------------------------------------------------------------------------- calibrator
@dataclass
class Calibrator:
    """A fitted calibration of logits, storable in ``run.json``.

    Attributes:
        method: ``"temperature"``, ``"isotonic"`` or ``"none"`` (identity).
        temperature: ``T`` for ``"temperature"`` (1.0 otherwise).
        knots: for ``"isotonic"``, the ``(x, y)`` knots of each class's map (see :func:`fit_isotonic`).
    """

    method: Literal["temperature", "isotonic", "none"] = DEFAULT_CALIBRATION
    temperature: float = 1.0
    knots: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @classmethod
    def fit(cls, logits: Any, labels: Any, method: str = DEFAULT_CALIBRATION) -> Calibrator:
        """Fit ``method`` on validation ``logits`` (N, C) / (N,) and int ``labels`` (N,)."""
        if method == "temperature":
            return cls("temperature", temperature=fit_temperature(logits, labels))
        if method == "isotonic":
            return cls("isotonic", knots=fit_isotonic(logits, labels))
        if method == "none":
            return cls("none")
        raise MedliteError(f"calibration method: unknown {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")

    def apply(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities float64 (N, C >= 2) of ``logits`` (N, C) or single-logit (N,)."""
        if self.method == "temperature":
            return logits_to_probs(logits, self.temperature)
        if self.method == "isotonic":
            return _apply_isotonic(self.knots, logits_to_probs(logits))
        if self.method == "none":
            return logits_to_probs(logits)
        raise MedliteError(f"calibration method: unknown {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (knots as lists of floats)."""
        out: dict[str, Any] = {"method": self.method, "temperature": float(self.temperature)}
        if self.method == "isotonic":
            out["knots"] = [{"x": x.tolist(), "y": y.tolist()} for x, y in self.knots]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Inverse of :meth:`to_dict`; a bad dictionary raises :class:`MedliteError`."""
        method = data.get("method")
        if method not in CALIBRATION_METHODS:
            raise MedliteError(f"calibration: unknown method {method!r} (expected one of {CALIBRATION_METHODS})")
        temperature = float(data.get("temperature", 1.0))
        if not (math.isfinite(temperature) and temperature > 0):
            raise MedliteError(f"calibration: temperature must be > 0, got {temperature}")
        knots = [(np.asarray(k["x"], np.float64), np.asarray(k["y"], np.float64)) for k in data.get("knots", [])]
        if method == "isotonic" and (not knots or any(x.shape != y.shape or x.size == 0 for x, y in knots)):
            raise MedliteError("calibration: an isotonic calibrator needs non-empty knots with matching x and y")
        return cls(method, temperature=temperature, knots=knots)


# --------------------------------------------------------------------------------------------- measures
class ReliabilityBins(NamedTuple):
    """Reliability-diagram data of the top-1 confidence.

    Attributes:
        edges: float (n_bins + 1,) equal-width edges from 0 to 1; bin ``i`` is ``[edges[i], edges[i+1])`` and
            the last bin also holds confidence exactly 1.
        confidence: float (n_bins,) mean top-1 confidence per bin, NaN where empty.
        accuracy: float (n_bins,) fraction of correct top-1 predictions per bin, NaN where empty.
        count: int (n_bins,) samples per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Sum over bins of ``count / N * |accuracy - confidence|``, in [0, 1]."""
        filled = self.count > 0
        return float(np.sum(np.abs(self.accuracy[filled] - self.confidence[filled]) * self.count[filled])
                     / self.count.sum())


def reliability_bins(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin the top-1 confidence into ``n_bins`` equal-width bins (Guo et al. 2017).

    Its ``ece`` is torchmetrics' ``multiclass_calibration_error(norm="l1")`` and the ECE that
    :func:`medlite.metrics.classification.compute_metrics` reports; torchmetrics alone puts a confidence of exactly
    1.0 (frequent with saturated float32 softmax) into an extra 16th bin, here it joins the last bin so the
    plotted bins always add up to the ECE.

    Args:
        probs: float (N, C >= 2) class probabilities.
        labels: int (N,) class indices.
        n_bins: number of bins, >= 1.
    """
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise MedliteError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    return confidence_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins)


def confidence_bins(conf: np.ndarray, hit: np.ndarray, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Equal-width bins of confidences against outcomes; a confidence of exactly 1.0 joins the last bin.

    Args:
        conf: float (N,) confidences in [0, 1]. Top-label ECE: ``max p``; positive-class ECE: ``p_pos``.
        hit: bool (N,) outcomes. Top-label: the prediction is correct; positive class: the label is 1.
        n_bins: number of bins, >= 1 (not validated here; :func:`reliability_bins` does).
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(hit, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN on purpose
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges, confidence, accuracy, count)


def calibration_summary(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> dict[str, float]:
    """ECE, Brier score and NLL of class probabilities.

    Args:
        probs: float (N, C >= 2) probabilities (e.g. :meth:`Calibrator.apply`).
        labels: int (N,) class indices.
        n_bins: ECE bins.

    Returns:
        ``{"ece": top-label ECE in [0, 1], "brier": mean over samples of sum over classes of
        (p_c - 1[y = c])^2 in [0, 2], "nll": mean -ln p_y in nats}``; ``p_y`` is clipped to
        [eps, 1 - eps] (float64 machine epsilon) as scikit-learn's ``log_loss`` does, so a probability of
        exactly 0 costs 36 nats, not infinity.
    """
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    onehot = np.eye(p.shape[1])[y]
    eps = np.finfo(np.float64).eps
    p_true = np.clip(p[np.arange(len(y)), y], eps, 1.0 - eps)
    return {
        "ece": reliability_bins(p, y, n_bins).ece,
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "nll": float(-np.mean(np.log(p_true))),
    }


def plot_reliability(diagrams: Mapping[str, ReliabilityBins], path: str | Path,
                     title: str = "reliability (top-1 confidence)") -> Path:
    """Reliability diagram: accuracy against mean confidence per bin for each entry, with bin counts below.

    Args:
        diagrams: label (e.g. ``"before"``, ``"after (T = 1.7)"``) -> :func:`reliability_bins`; the legend adds
            each one's ECE.
        path: the PNG to write (atomically).
        title: figure title.
    """
    from medlite.metrics._plot import figure, save_png

    if not diagrams:
        raise MedliteError("plot_reliability: no diagrams to plot")
    fig, (top, bottom) = figure(5.0, 5.2, nrows=2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect calibration")
    width = np.diff(next(iter(diagrams.values())).edges)[0] / (len(diagrams) + 1)
    for k, (name, bins) in enumerate(diagrams.items()):
        filled = bins.count > 0
        top.plot(bins.confidence[filled], bins.accuracy[filled], "o-", ms=4, label=f"{name} (ECE {bins.ece:.3f})")
        bottom.bar(bins.edges[:-1] + (k + 0.5) * width, bins.count, width=width, align="edge", label=name)
    top.set_ylabel("accuracy")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.02)
    top.set_title(title)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("images")
    return save_png(fig, path)
