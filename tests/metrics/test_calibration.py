"""Temperature scaling, isotonic calibration and the calibration measures (ECE, Brier, NLL)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from medlite.errors import MedliteError
from medlite.metrics.calibration import (
    Calibrator,
    apply_temperature,
    calibration_summary,
    fit_isotonic,
    fit_temperature,
    logits_to_probs,
    plot_reliability,
    reliability_bins,
)
from medlite.metrics.classification import reliability_bins as torch_reliability_bins


def _overconfident(n: int, num_classes: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``temperature`` times too large for labels drawn from ``softmax(true logits)``."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.5, (n, num_classes))
    cum = softmax(true, axis=1).cumsum(axis=1)
    labels = np.minimum((rng.random((n, 1)) > cum).sum(axis=1), num_classes - 1)
    return true * temperature, labels


@pytest.mark.parametrize("num_classes", [2, 3, 6])
@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(num_classes: int, true_t: float) -> None:
    logits, labels = _overconfident(20000, num_classes, true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_fit_temperature_single_logit_binary() -> None:
    rng = np.random.default_rng(1)
    true = rng.normal(0.0, 2.0, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true))).astype(np.int64)
    assert fit_temperature((3.0 * true)[:, None], labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(3.0 * true, labels) == pytest.approx(3.0, rel=0.05)


def test_temperature_lowers_ece_of_an_overconfident_model_on_held_out_data() -> None:
    logits, labels = _overconfident(8000, 6, 3.0, seed=2)
    fit, held = slice(0, 4000), slice(4000, None)
    t = fit_temperature(logits[fit], labels[fit])
    before = calibration_summary(logits_to_probs(logits[held]), labels[held])
    after = calibration_summary(apply_temperature(logits[held], t), labels[held])
    assert before["ece"] > 0.15
    assert after["ece"] < 0.03 < before["ece"] / 5
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    # one scalar never changes the arg-max class
    np.testing.assert_array_equal(apply_temperature(logits, t).argmax(1), logits.argmax(1))


def test_fit_temperature_edge_cases() -> None:
    assert fit_temperature(np.zeros((50, 3)), np.arange(50) % 3) == 1.0  # no temperature changes anything
    separable = np.eye(3)[np.arange(30) % 3] * 5.0
    with pytest.warns(UserWarning, match="every validation image is classified correctly"):
        assert fit_temperature(separable, np.arange(30) % 3) == 1.0
    one_wrong = np.r_[separable, [[0.0, 5.0, 0.0]]]  # one confident mistake: a minimum exists again
    assert 1.0 < fit_temperature(one_wrong, np.r_[np.arange(30) % 3, 0]) < 100.0
    with pytest.warns(UserWarning, match="search bound"):
        fit_temperature(one_wrong, np.r_[np.arange(30) % 3, 0], bounds=(0.5, 1.1))
    with pytest.raises(MedliteError, match="labels"):
        fit_temperature(np.zeros((4, 3)), [0, 1, 2])
    with pytest.raises(MedliteError, match=r"class indices must lie in \[0, 2\]"):
        fit_temperature(np.zeros((3, 3)), [0, 1, 3])
    with pytest.raises(MedliteError, match="NaN"):
        fit_temperature(np.full((3, 3), np.nan), [0, 1, 2])
    with pytest.raises(MedliteError, match="temperature"):
        apply_temperature(np.zeros((3, 3)), 0.0)


def test_isotonic_matches_sklearn_and_lowers_ece() -> None:
    logits, labels = _overconfident(6000, 2, 3.0, seed=3)
    (x, y), = fit_isotonic(logits[:3000], labels[:3000])
    p1 = logits_to_probs(logits)[:, 1]
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p1[:3000], labels[:3000] == 1)
    cal = Calibrator.fit(logits[:3000], labels[:3000], method="isotonic")
    np.testing.assert_allclose(cal.apply(logits[3000:])[:, 1], iso.predict(p1[3000:]), atol=1e-12)
    before = calibration_summary(logits_to_probs(logits[3000:]), labels[3000:])["ece"]
    assert calibration_summary(cal.apply(logits[3000:]), labels[3000:])["ece"] < before / 3


def test_isotonic_multiclass_rows_are_probabilities() -> None:
    logits, labels = _overconfident(3000, 4, 2.0, seed=4)
    cal = Calibrator.fit(logits[:1500], labels[:1500], method="isotonic")
    assert len(cal.knots) == 4
    p = cal.apply(logits[1500:])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.min() >= 0.0
    before = calibration_summary(logits_to_probs(logits[1500:]), labels[1500:])["ece"]
    assert calibration_summary(p, labels[1500:])["ece"] < before / 2


@pytest.mark.parametrize("method", ["temperature", "isotonic", "none"])
def test_calibrator_json_round_trip(method: str) -> None:
    logits, labels = _overconfident(500, 3, 2.0, seed=5)
    cal = Calibrator.fit(logits, labels, method=method)
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(again.apply(logits), cal.apply(logits))
    with pytest.raises(MedliteError, match="unknown"):
        Calibrator.fit(logits, labels, method="platt")
    with pytest.raises(MedliteError, match="method"):
        Calibrator.from_dict({"method": "nope"})
    with pytest.raises(MedliteError, match="knots"):
        Calibrator.from_dict({"method": "isotonic", "knots": []})


@pytest.mark.parametrize("num_classes", [2, 3, 6])
@pytest.mark.parametrize("n_bins", [15, 10])
def test_ece_equals_torchmetrics(num_classes: int, n_bins: int) -> None:
    rng = np.random.default_rng(num_classes)
    probs = rng.dirichlet(np.full(num_classes, 0.3), size=2000)
    labels = rng.integers(0, num_classes, 2000)
    probs = probs[probs.max(axis=1) < 1.0 - 1e-6]  # torchmetrics alone moves a confidence of exactly 1 apart
    labels = labels[: len(probs)]
    expected = multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), num_classes,
                                            n_bins=n_bins, norm="l1")
    assert reliability_bins(probs, labels, n_bins).ece == pytest.approx(float(expected), abs=1e-6)
    if n_bins == 15:
        assert calibration_summary(probs, labels)["ece"] == pytest.approx(float(expected), abs=1e-6)


def test_ece_equals_medlite_metrics_even_with_saturated_confidence() -> None:
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 1, 0])
    ours, theirs = reliability_bins(probs, labels), torch_reliability_bins(probs, labels)
    assert ours.ece == pytest.approx(theirs.ece)
    np.testing.assert_array_equal(ours.count, theirs.count)
    # hand check: bin [14/15, 1] holds the three confident rows (2 right, mean confidence 1): 3/5 * 1/3;
    # 0.7 (right) and 0.55 (right) sit alone in their bins: 1/5 * 0.3 + 1/5 * 0.45
    assert ours.ece == pytest.approx(0.2 + 0.06 + 0.09)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_brier_and_nll_equal_sklearn(num_classes: int) -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(num_classes), size=500)
    labels = rng.integers(0, num_classes, 500)
    got = calibration_summary(probs, labels)
    onehot = np.eye(num_classes)[labels]
    assert got["brier"] == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
    assert got["brier"] == pytest.approx(brier_score_loss(labels, probs, labels=range(num_classes),
                                                          scale_by_half=False))
    assert got["nll"] == pytest.approx(log_loss(labels, probs, labels=range(num_classes)))


def test_nll_of_a_zero_probability_is_finite_as_in_sklearn() -> None:
    probs, labels = np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([1, 0])
    assert calibration_summary(probs, labels)["nll"] == pytest.approx(log_loss(labels, probs, labels=[0, 1]))


def test_summary_rejects_bad_probabilities() -> None:
    with pytest.raises(MedliteError, match="sum to 1"):
        calibration_summary(np.array([[0.5, 0.6]]), [0])
    with pytest.raises(MedliteError, match=r"\(N >= 1, C >= 2\)"):
        calibration_summary(np.array([0.5, 0.5]), [0])
    with pytest.raises(MedliteError, match="n_bins"):
        reliability_bins(np.array([[0.5, 0.5]]), [0], n_bins=0)


def test_plot_reliability_writes_a_png(tmp_path: Path) -> None:
    logits, labels = _overconfident(400, 3, 3.0)
    t = fit_temperature(logits, labels)
    path = plot_reliability({"before": reliability_bins(logits_to_probs(logits), labels),
                             f"after (T = {t:.2f})": reliability_bins(apply_temperature(logits, t), labels)},
                            tmp_path / "plots" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))
    with pytest.raises(MedliteError, match="no diagrams"):
        plot_reliability({}, tmp_path / "x.png")


def test_calibration_and_ood_run_without_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from medlite.metrics.calibration import Calibrator, calibration_summary\n"
        "from medlite.metrics.ood import OODGate\n"
        "import medlite.data.input_checks\n"
        "z = np.random.default_rng(0).normal(size=(60, 3)); y = np.arange(60) % 3\n"
        "for m in ('temperature', 'isotonic'): calibration_summary(Calibrator.fit(z, y, m).apply(z), y)\n"
        "OODGate.fit(z, y).score(z)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
