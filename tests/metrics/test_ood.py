"""The OOD gate (Mahalanobis, energy, max-softmax), its threshold, storage and evaluation helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from medlite.errors import MedliteError
from medlite.metrics.ood import (
    OODGate,
    calibrate_threshold,
    fpr_at_tpr,
    ood_auroc,
    plot_risk_coverage,
    plot_score_histograms,
    risk_coverage,
    selective_accuracy,
)


def _gaussians(n_per_class: int, dim: int, seed: int = 0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes with means 4 apart along the first axes and one correlated covariance, all shifted."""
    rng = np.random.default_rng(seed)
    mix = np.eye(dim) + 0.5 * np.random.default_rng(99).normal(size=(dim, dim)) / np.sqrt(dim)
    means = np.zeros((3, dim))
    means[1, 0], means[2, 1] = 4.0, 4.0
    labels = np.repeat(np.arange(3), n_per_class)
    x = means[labels] + rng.normal(size=(len(labels), dim)) @ mix.T + shift
    return x, labels


def test_mahalanobis_separates_shifted_gaussians() -> None:
    train, y = _gaussians(300, 16, seed=0)
    test, _ = _gaussians(200, 16, seed=1)
    shifted, _ = _gaussians(200, 16, seed=2, shift=1.5)
    gate = OODGate.fit(train, y, method="mahalanobis")
    assert gate.means.shape == (3, 16) and gate.precision.shape == (16, 16)
    s_in, s_out = gate.score(features=test), gate.score(features=shifted)
    assert ood_auroc(s_in, s_out) > 0.99
    # in-distribution squared distances follow roughly chi-square with D degrees of freedom
    assert 10 < np.median(s_in) < 22


def test_mahalanobis_equals_the_explicit_formula() -> None:
    train, y = _gaussians(100, 5)
    gate = OODGate.fit(train, y)
    x = np.random.default_rng(3).normal(size=(7, 5)) * 3
    expected = [min(float((xi - m) @ gate.precision @ (xi - m)) for m in gate.means) for xi in x]
    np.testing.assert_allclose(gate.score(features=x), expected, rtol=1e-10)
    np.testing.assert_allclose(gate.score(features=gate.means), 0.0, atol=1e-9)


def test_mahalanobis_with_more_features_than_images() -> None:
    train, y = _gaussians(20, 100, seed=4)  # D = 100 > N = 60: the sample covariance is singular
    gate = OODGate.fit(train, y)
    assert np.isfinite(gate.precision).all()
    s_in = gate.score(features=_gaussians(50, 100, seed=5)[0])
    s_out = gate.score(features=_gaussians(50, 100, seed=6, shift=1.0)[0])
    assert np.isfinite(s_in).all() and ood_auroc(s_in, s_out) > 0.95


def test_energy_score() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4))
    gate = OODGate.fit(None, None, logits=z, method="energy")
    np.testing.assert_allclose(gate.score(logits=z), -logsumexp(z, axis=1))
    warm = OODGate.fit(None, None, method="energy", temperature=2.0)
    np.testing.assert_allclose(warm.score(logits=z), -2.0 * logsumexp(z / 2.0, axis=1))
    # a single logit is the two-class head [0, z]: energy -softplus(z)
    single = OODGate.fit(None, None, logits=z[:, 0], method="energy")
    np.testing.assert_allclose(single.score(logits=z[:, 0]), -np.logaddexp(0.0, z[:, 0]))
    # confident (large-margin) logits have low energy, flat ones high: energy flags the flat ones
    confident = np.eye(4)[rng.integers(0, 4, 200)] * 8 + rng.normal(0, 0.5, (200, 4))
    flat = rng.normal(0, 0.5, (200, 4))
    assert ood_auroc(gate.score(logits=confident), gate.score(logits=flat)) > 0.99
    with pytest.raises(MedliteError, match="width 4"):
        gate.score(logits=z[:, :3])
    with pytest.raises(MedliteError, match="needs the logits"):
        gate.score(features=z)


def test_msp_score() -> None:
    z = np.array([[10.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(OODGate.fit(None, None, method="msp").score(logits=z),
                               [1 - 1 / (1 + np.exp(-10.0)), 0.5])


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(MedliteError, match="unknown"):
        OODGate.fit(np.zeros((4, 2)), [0, 0, 1, 1], method="knn")
    with pytest.raises(MedliteError, match="labels"):
        OODGate.fit(np.zeros((4, 2)), [0, 1])
    with pytest.raises(MedliteError, match="no spread"):
        OODGate.fit(np.zeros((2, 2)), np.array([0, 1]))
    gate = OODGate.fit(np.random.default_rng(0).normal(size=(10, 3)), np.arange(10) % 2)
    with pytest.raises(MedliteError, match="width 3"):
        gate.score(features=np.zeros((2, 4)))
    with pytest.raises(MedliteError, match="needs the pooled features"):
        gate.score(logits=np.zeros((2, 2)))
    with pytest.raises(MedliteError, match="no threshold"):
        gate.flag([1.0])


def test_threshold_gives_one_percent_false_refusals_on_held_out_in_distribution_images() -> None:
    rng = np.random.default_rng(0)
    assert np.mean(rng.normal(size=50000) > calibrate_threshold(rng.normal(size=5000))) == pytest.approx(0.01,
                                                                                                      abs=0.003)
    train, y = _gaussians(1000, 8, seed=1)
    gate = OODGate.fit(train, y)
    gate.calibrate_threshold(gate.score(features=_gaussians(1500, 8, seed=2)[0]), quantile=0.99)
    held_out = gate.score(features=_gaussians(10000, 8, seed=3)[0])
    assert gate.quantile == 0.99
    assert np.mean(gate.flag(held_out)) == pytest.approx(0.01, abs=0.003)
    with pytest.raises(MedliteError, match="quantile"):
        calibrate_threshold([1.0, 2.0], quantile=1.0)
    with pytest.raises(MedliteError, match="non-empty"):
        calibrate_threshold([])


def test_status_lines() -> None:
    gate = OODGate(method="energy", threshold=-2.5)
    assert gate.status(-3.0) == "ok"
    assert gate.status(-2.5) == "ok"  # flagged only strictly above the threshold
    assert gate.status(-1.25) == "flagged: unlike the training data (score -1.25 > threshold -2.5)"
    assert gate.status(-3.0, reason="tiny image (20 x 20 pixels)") == "rejected: tiny image (20 x 20 pixels)"


@pytest.mark.parametrize("method", ["mahalanobis", "energy", "msp"])
def test_storage_round_trips(method: str, tmp_path: Path) -> None:
    train, y = _gaussians(50, 6)
    gate = OODGate.fit(train, y, logits=train[:, :3], method=method)
    gate.calibrate_threshold(gate.score(features=train, logits=train[:, :3]))
    meta = json.loads(json.dumps(gate.to_dict()))
    again = OODGate.from_dict(meta, gate.to_arrays())
    loaded = OODGate.load(gate.save(tmp_path / "ood.safetensors"))
    for other in (again, loaded):
        assert other.to_dict() == gate.to_dict()
        np.testing.assert_array_equal(other.score(features=train, logits=train[:, :3]),
                                      gate.score(features=train, logits=train[:, :3]))


def test_load_rejects_what_is_not_a_gate(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    with pytest.raises(MedliteError, match="not found"):
        OODGate.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MedliteError, match="not a readable"):
        OODGate.load(tmp_path / "junk.safetensors")
    save_file({"w": np.zeros(3)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(MedliteError, match="metadata"):
        OODGate.load(tmp_path / "weights.safetensors")
    with pytest.raises(MedliteError, match="needs its 'means'"):
        OODGate.from_dict({"method": "mahalanobis"})


def test_auroc_equals_sklearn_with_ood_positive() -> None:
    rng = np.random.default_rng(0)
    s_in, s_out = np.round(rng.normal(0, 1, 300), 1), np.round(rng.normal(1, 1, 200), 1)  # rounding: ties
    expected = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[s_in, s_out])
    assert ood_auroc(s_in, s_out) == pytest.approx(expected)
    assert ood_auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and ood_auroc([2.0, 3.0], [0.0, 1.0]) == 0.0


def test_fpr_at_tpr_hand_checked() -> None:
    s_in, s_out = [1, 2, 3, 4, 5], [3, 6, 7, 8]
    # flagging 95 % of the 4 OOD images means all 4: threshold 3 flags in-distribution 3, 4, 5 -> 3/5
    assert fpr_at_tpr(s_in, s_out, 0.95) == pytest.approx(0.6)
    # 3 of 4 (75 %): threshold 6 flags no in-distribution image
    assert fpr_at_tpr(s_in, s_out, 0.75) == 0.0
    assert fpr_at_tpr([1, 2, 3, 4, 5], [4.5, 0.5], 0.5) == pytest.approx(0.2)
    assert fpr_at_tpr([1, 2, 3, 4, 5], [4.5, 0.5], 1.0) == 1.0
    with pytest.raises(MedliteError, match="tpr"):
        fpr_at_tpr(s_in, s_out, 0.0)


def test_risk_coverage_hand_checked() -> None:
    correct = np.array([True, True, False, True, False])
    coverage, risk = risk_coverage(correct, [0.1, 0.2, 0.9, 0.3, 0.8])
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 0, 0.25, 0.4])
    coverage, risk = risk_coverage(correct, [0.1, 0.1, 0.5, 0.5, 0.5])  # ties leave or stay together
    np.testing.assert_allclose(coverage, [0.4, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.4])
    with pytest.raises(MedliteError, match="bool"):
        risk_coverage([1, 0], [0.1, 0.2])


def test_selective_accuracy() -> None:
    got = selective_accuracy([True, True, False, True, False], [0.1, 0.2, 0.9, 0.3, 0.8], threshold=0.5)
    assert got == {"coverage": 0.6, "accuracy_kept": 1.0, "accuracy_all": 0.6, "n_kept": 3, "n": 5}


def test_plots_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    correct, scores = rng.random(100) < 0.8, rng.normal(size=100)
    a = plot_risk_coverage({"energy": risk_coverage(correct, scores)}, tmp_path / "rc.png")
    b = plot_score_histograms(scores, {"noise": scores + 3}, tmp_path / "h.png", threshold=1.0)
    c = plot_score_histograms(np.exp(scores), {"text": np.exp(scores + 6)}, tmp_path / "log.png")  # log bins
    for path in (a, b, c):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
