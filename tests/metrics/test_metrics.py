"""medlite.metrics.classification against scikit-learn / torchmetrics references and hand-computed values."""

from __future__ import annotations

import io
import json
import time
import warnings

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_auroc,
    multiclass_calibration_error,
)

from medlite.cli.render import format_metrics
from medlite.errors import MedliteError
from medlite.metrics.auc import auc_summary
from medlite.metrics.bootstrap import _accuracy_from_counts, _stratified_counts, auc_from_counts
from medlite.metrics.classification import (
    compute_metrics,
    probs_from_logits,
    reliability_bins,
    roc_curves,
    youden_threshold,
)

BASE_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "auc_macro_present", "auc_classes",
             "per_class", "confusion_matrix", "ece", "ci95", "n"}
POINT_KEYS = {"threshold", "accuracy", "sensitivity", "specificity", "balanced_accuracy", "f1"}


def _task(n: int, c: int, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced targets int (n,) and informative softmax probabilities float (n, c)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(c, size=n, p=np.linspace(2.0, 1.0, c) / np.linspace(2.0, 1.0, c).sum())
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += signal
    return probs_from_logits(logits), y


@pytest.mark.parametrize("c", [2, 4])
def test_point_estimates_match_sklearn(c: int) -> None:
    p, y = _task(400, c, seed=c)
    pred = p.argmax(1)
    names = [f"class{k}" for k in range(c)]
    m = compute_metrics(p, y, names, n_bootstrap=0)
    assert m["n"] == 400
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    ref_auc = roc_auc_score(y, p[:, 1]) if c == 2 else roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert m["auc_macro"] == pytest.approx(ref_auc, abs=1e-12)
    cm = confusion_matrix(y, pred, labels=range(c))
    assert m["confusion_matrix"] == cm.tolist()
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=range(c), zero_division=0)
    tm_auc = multiclass_auroc(torch.from_numpy(p), torch.from_numpy(y), c, average=None).numpy()
    for k, name in enumerate(names):
        row = m["per_class"][name]
        tn = cm.sum() - cm[k].sum() - cm[:, k].sum() + cm[k, k]
        fp = cm[:, k].sum() - cm[k, k]
        assert row["precision"] == pytest.approx(prec[k], abs=1e-12)
        assert row["recall"] == pytest.approx(rec[k], abs=1e-12)
        assert row["f1"] == pytest.approx(f1[k], abs=1e-12)
        assert row["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert row["accuracy"] == pytest.approx(accuracy_score(y == k, pred == k), abs=1e-12)
        assert row["auc"] == pytest.approx(roc_auc_score(y == k, p[:, k]), abs=1e-12)
        assert row["auc"] == pytest.approx(float(tm_auc[k]), abs=1e-5)  # torchmetrics works in float32
    assert m["per_class"][names[0]]["accuracy"] != m["per_class"][names[0]]["recall"]  # OvR acc is not recall


def test_key_sets_binary_and_multiclass() -> None:
    p2, y2 = _task(120, 2)
    m2 = compute_metrics(p2, y2, ["normal", "pneumonia"], n_bootstrap=50)
    assert set(m2) == BASE_KEYS | {"thresholds", "ece_positive_class"}
    assert set(m2["thresholds"]) == {"0.5", "youden"}
    assert set(m2["thresholds"]["0.5"]) == POINT_KEYS
    assert set(m2["thresholds"]["youden"]) == POINT_KEYS | {"chosen_on"}
    assert m2["thresholds"]["youden"]["chosen_on"] == "test"
    assert set(m2["ci95"]) == {"accuracy", "auc_macro", "auc_macro_present"}
    assert m2["ci95"]["auc_macro"] == m2["ci95"]["auc_macro_present"] and m2["auc_classes"] == ["pneumonia"]
    assert set(m2["per_class"]["pneumonia"]) == {"precision", "recall", "f1", "specificity", "auc",
                                                 "accuracy"}
    (p3, y3), (vp3, vy3) = _task(90, 3), _task(30, 3, seed=1)
    m3 = compute_metrics(torch.from_numpy(p3), torch.from_numpy(y3), ["a", "b", "c"], n_bootstrap=50,
                         val_probs=vp3, val_targets=vy3)
    assert set(m3) == BASE_KEYS
    for m in (m2, m3):  # strictly JSON-serialisable (no numpy scalars, no NaN)
        assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_threshold_05_matches_argmax_and_sensitivity() -> None:
    p, y = _task(300, 2, seed=3)
    m = compute_metrics(p, y, ["neg", "pos"], n_bootstrap=0)
    half = m["thresholds"]["0.5"]
    assert half["accuracy"] == pytest.approx(m["accuracy"])
    assert half["sensitivity"] == pytest.approx(m["per_class"]["pos"]["recall"])
    assert half["specificity"] == pytest.approx(m["per_class"]["neg"]["recall"])
    assert half["f1"] == pytest.approx(m["per_class"]["pos"]["f1"])
    assert half["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])


def test_youden_threshold_crafted_example() -> None:
    # sorted: .05n .1n .2n .3n | .4p .45n | .6p .7p .9p -> cut between .3 and .4: sens 1, spec 4/5, J = 0.8
    # (between .45 and .6 gives sens 3/4, spec 1, J = 0.75)
    scores = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.4, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    t = youden_threshold(scores, labels)
    assert t == pytest.approx(0.35)
    fpr, tpr, thr = roc_curve(labels, scores)
    assert (tpr - fpr).max() == pytest.approx(0.8)  # the sklearn optimum agrees

    # chosen on validation data and applied to a test set: predictions are p > 0.35
    test_scores = np.array([0.34, 0.36, 0.5, 0.2, 0.8, 0.1])
    test_labels = np.array([1, 0, 1, 0, 1, 0])
    as_probs = np.stack([1 - test_scores, test_scores], 1)
    m = compute_metrics(as_probs, test_labels, ["n", "p"], val_probs=np.stack([1 - scores, scores], 1),
                        val_targets=labels, n_bootstrap=0)
    yd = m["thresholds"]["youden"]
    assert yd["chosen_on"] == "val" and yd["threshold"] == pytest.approx(0.35)
    assert yd["sensitivity"] == pytest.approx(2 / 3) and yd["specificity"] == pytest.approx(2 / 3)
    assert yd["accuracy"] == pytest.approx(4 / 6)
    assert m["thresholds"]["0.5"]["sensitivity"] == pytest.approx(1 / 3)


def test_youden_prefers_validation_over_test() -> None:
    p, y = _task(200, 2, seed=5)
    vp, vy = _task(100, 2, seed=6)
    on_val = compute_metrics(p, y, ["a", "b"], val_probs=vp, val_targets=vy, n_bootstrap=0)
    on_test = compute_metrics(p, y, ["a", "b"], n_bootstrap=0)
    assert on_val["thresholds"]["youden"]["threshold"] == pytest.approx(youden_threshold(vp[:, 1], vy))
    assert on_test["thresholds"]["youden"]["threshold"] == pytest.approx(youden_threshold(p[:, 1], y))
    # on its own data the Youden threshold reaches the maximal balanced accuracy of the ROC curve
    fpr, tpr, _ = roc_curve(y, p[:, 1])
    assert on_test["thresholds"]["youden"]["balanced_accuracy"] == pytest.approx((1 + (tpr - fpr).max()) / 2)


def test_ece_hand_computed() -> None:
    # top-1 confidences .9 (right), .91 (wrong) share bin [13/15, 14/15); .82, .7, .62 are alone in theirs
    probs = np.array([[0.9, 0.1], [0.91, 0.09], [0.18, 0.82], [0.3, 0.7], [0.38, 0.62]])
    targets = np.array([0, 1, 0, 1, 1])
    expected = (2 / 5) * abs(0.5 - 0.905) + (1 / 5) * (0.82 + 0.3 + 0.38)
    bins = reliability_bins(probs, targets)
    assert bins.ece == pytest.approx(expected)  # 0.462
    assert compute_metrics(probs, targets, ["a", "b"], n_bootstrap=0)["ece"] == pytest.approx(expected)
    assert bins.count.tolist() == [0] * 9 + [1, 1, 0, 1, 2, 0]
    assert bins.edges.shape == (16,) and np.isnan(bins.confidence[0]) and bins.accuracy[13] == 0.5


def test_ece_matches_torchmetrics_and_keeps_confidence_one_in_last_bin() -> None:
    p, y = _task(500, 3, seed=7)
    tm = multiclass_calibration_error(torch.from_numpy(p).float(), torch.from_numpy(y), 3, n_bins=15)
    assert reliability_bins(p, y).ece == pytest.approx(float(tm), abs=1e-5)
    saturated = reliability_bins(np.array([[0.0, 1.0], [0.05, 0.95]]), np.array([0, 1]))
    assert saturated.count[-1] == 2 and saturated.count.sum() == 2


def test_fast_bootstrap_statistics_match_sklearn() -> None:
    rng = np.random.default_rng(11)
    n = 300
    y = rng.integers(0, 2, n)
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 1)  # rounding creates many ties
    pred = (scores > 0.5).astype(int)
    idx = rng.integers(0, n, (5, n))  # plain resamples as index lists
    counts = np.stack([np.bincount(row, minlength=n) for row in idx])
    for row, auc, acc in zip(idx, auc_from_counts(scores, y == 1, counts),
                             _accuracy_from_counts(pred == y, counts), strict=True):
        assert auc == pytest.approx(roc_auc_score(y[row], scores[row]), abs=1e-12)
        assert acc == pytest.approx(accuracy_score(y[row], pred[row]), abs=1e-12)
    strat = _stratified_counts(y, 4, np.random.default_rng(0))
    assert strat.shape == (4, n)
    assert (strat[:, y == 1].sum(1) == (y == 1).sum()).all() and (strat.sum(1) == n).all()


def test_bootstrap_ci_contains_estimate_narrows_and_is_seeded() -> None:
    p_small, y_small = _task(200, 3, seed=8)
    p_big, y_big = _task(4000, 3, seed=8)
    small = compute_metrics(p_small, y_small, "abc", n_bootstrap=300, seed=1)
    big = compute_metrics(p_big, y_big, "abc", n_bootstrap=300, seed=1)
    for m in (small, big):
        for key in ("accuracy", "auc_macro"):
            lo, hi = m["ci95"][key]
            assert lo < m[key] < hi
    for key in ("accuracy", "auc_macro"):  # 20x the samples: about 1/sqrt(20) of the width
        assert np.diff(big["ci95"][key])[0] < 0.5 * np.diff(small["ci95"][key])[0]
    again = compute_metrics(p_small, y_small, "abc", n_bootstrap=300, seed=1)
    other = compute_metrics(p_small, y_small, "abc", n_bootstrap=300, seed=2)
    assert again["ci95"] == small["ci95"]
    assert other["ci95"] != small["ci95"]
    assert compute_metrics(p_small, y_small, "abc", n_bootstrap=0)["ci95"] == {
        "accuracy": None, "auc_macro": None, "auc_macro_present": None}


def test_bootstrap_speed_1000_x_5000() -> None:
    p, y = _task(5000, 2, seed=9)
    start = time.process_time()  # CPU time: robust against other jobs sharing the machine
    compute_metrics(p, y, ["a", "b"], n_bootstrap=1000)
    assert time.process_time() - start < 3.0


def test_absent_class_gives_null_auc_and_warning() -> None:
    p, _ = _task(60, 3, seed=10)
    y = np.array([0, 1] * 30)
    with pytest.warns(UserWarning, match="'c' \\(absent\\).*auc_macro_present averages the 2 classes"):
        m = compute_metrics(p, y, "abc", n_bootstrap=20)
    assert m["per_class"]["c"]["auc"] is None
    with pytest.warns(UserWarning, match="not defined"):  # scikit-learn has no macro AUC here either
        assert np.isnan(roc_auc_score(y, p, multi_class="ovr", labels=[0, 1, 2]))
    present = [roc_auc_score(y == k, p[:, k]) for k in (0, 1)]
    assert m["auc_macro"] is None and m["ci95"]["auc_macro"] is None
    assert m["auc_macro_present"] == pytest.approx(np.mean(present), abs=1e-12)
    assert m["auc_classes"] == ["a", "b"]
    lo, hi = m["ci95"]["auc_macro_present"]
    assert lo < m["auc_macro_present"] < hi
    assert auc_summary(m) == f"macro AUC n/a (2 of 3 classes have an AUC, mean {np.mean(present):.3f}: a, b)"
    out = io.StringIO()
    Console(file=out, width=140).print(format_metrics(json.loads(json.dumps(m))))
    text = " ".join(out.getvalue().split())  # the caption wraps at the table's width
    assert "AUC (mean over the 2 classes present)" in text and f"{np.mean(present):.3f}" in text
    assert ("macro AUC is n/a: no AUC for c (absent from the labels, or every label); the mean over the classes "
            "present averages a, b") in text
    with warnings.catch_warnings():  # sklearn warns that class 2 is predicted but absent, as expected here
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    json.dumps(m, allow_nan=False)


def test_single_class_binary_test_set() -> None:
    p, _ = _task(20, 2)
    with pytest.warns(UserWarning):
        m = compute_metrics(p, np.ones(20, dtype=int), ["n", "p"], n_bootstrap=10)
    assert m["auc_macro"] is None and m["ci95"]["auc_macro"] is None and m["thresholds"]["youden"] is None
    assert m["auc_macro_present"] is None and m["auc_classes"] == [] and m["ci95"]["auc_macro_present"] is None
    assert auc_summary(m) == "macro AUC n/a (no class has an AUC)"
    with pytest.raises(MedliteError, match="val_targets"), pytest.warns(UserWarning):
        compute_metrics(p, np.ones(20, dtype=int), ["n", "p"], val_probs=p, val_targets=np.zeros(20, int))


def _confident_binary(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and single logits ``scale * z`` of a good binary model (AUC about 0.97)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    return scale * (rng.normal(size=400) + 2.6 * (y - 0.5)), y


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_auc_of_confident_models_is_the_auc_of_their_logits(scale: float) -> None:
    logits, y = _confident_binary(scale)
    reference = roc_auc_score(y, logits)
    probs = probs_from_logits(logits)
    m = compute_metrics(probs, y, ["neg", "pos"], n_bootstrap=0)
    assert m["auc_macro"] == pytest.approx(reference, abs=1e-12)
    if scale == 40.0:  # p_pos has rounded to 1.0 for many samples: ranking it ties them (float32 even more)
        assert roc_auc_score(y, probs[:, 1]) < reference - 5e-4
        assert roc_auc_score(y, probs[:, 1].astype(np.float32)) < reference - 1e-2
    two = np.stack([np.zeros_like(logits), logits], axis=1)  # the same model as two softmax logits
    assert compute_metrics(probs_from_logits(two), y, ["neg", "pos"], n_bootstrap=0)["auc_macro"] == \
        pytest.approx(reference, abs=1e-12)


def test_multiclass_auc_of_saturated_softmax() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    logits = 40.0 * (rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y])
    m = compute_metrics(probs_from_logits(logits), y, "abc", n_bootstrap=0)
    for k, name in enumerate("abc"):
        rest = np.logaddexp.reduce(np.delete(logits, k, axis=1), axis=1)  # exact one-vs-rest log-odds
        assert m["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == k, logits[:, k] - rest), abs=1e-12)


def test_predict_proba_is_float64() -> None:
    from types import SimpleNamespace

    from torch import nn

    from medlite.models.inputs import predict_proba

    class Confident(nn.Module):  # one logit: 200 * (mean intensity - 0.5)
        cfg = SimpleNamespace(mean=0.0, std=1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 200.0 * (x.mean(dim=(1, 2, 3)) - 0.5)[:, None]

    images = np.stack([np.full((4, 4), v, np.uint8) for v in (0, 10, 20, 235, 245, 255)])
    probs = predict_proba(Confident(), images)
    assert probs.dtype == np.float64
    # the negative-class probabilities stay distinct (float32 rounds the smallest to 0, the rest ties at 1.0)
    assert np.unique(probs[3:, 0]).size == 3 and probs[3:, 0].min() > 0


def test_binary_ece_positive_class_matches_torchmetrics() -> None:
    p, y = _task(500, 2, seed=14)
    m = compute_metrics(p, y, ["neg", "pos"], n_bootstrap=0)
    tm_binary = binary_calibration_error(torch.from_numpy(np.ascontiguousarray(p[:, 1])), torch.from_numpy(y),
                                         n_bins=15)
    tm_top = multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), 2, n_bins=15)
    assert m["ece_positive_class"] == pytest.approx(float(tm_binary), abs=1e-6)
    assert m["ece"] == pytest.approx(float(tm_top), abs=1e-6)
    assert abs(m["ece"] - m["ece_positive_class"]) > 1e-3  # two different quantities
    # hand-computed: p_pos .1 (y 0) and .12 (y 1) share bin [1/15, 2/15); .9 (y 1) is alone
    hand = compute_metrics(np.array([[0.9, 0.1], [0.88, 0.12], [0.1, 0.9]]), np.array([0, 1, 1]), ["n", "p"],
                           n_bootstrap=0)
    assert hand["ece_positive_class"] == pytest.approx((2 / 3) * abs(0.5 - 0.11) + (1 / 3) * 0.1)
    assert "ece_positive_class" not in compute_metrics(*_task(50, 3), "abc", n_bootstrap=0)
    out = io.StringIO()
    Console(file=out, width=140).print(format_metrics(m))
    assert "ECE, top label" in out.getvalue() and "ECE, positive class" in out.getvalue()


def test_probs_from_logits_shapes() -> None:
    z = np.array([-2.0, 0.0, 40.0])
    for logits in (z, z[:, None], torch.from_numpy(z)):
        probs = probs_from_logits(logits)
        assert probs.shape == (3, 2)
        np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-z)))
        np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs_from_logits(z)[2, 0] > 0  # sigmoid(-40) is not rounded to 0 by 1 - sigmoid(40)
    multi = probs_from_logits(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(multi[0], np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum())
    with pytest.raises(MedliteError, match="logits"):
        probs_from_logits(np.zeros((2, 2, 2)))


def test_roc_curves_and_format() -> None:
    p, y = _task(150, 3, seed=12)
    curves = roc_curves(p, y, class_names=["a", "b", "c"])
    assert set(curves) == {"a", "b", "c"}
    fpr, tpr = curves["b"]
    assert fpr[0] == 0 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y == 1, p[:, 1]))
    assert set(roc_curves(*_task(50, 2))) == {1}

    p2, y2 = _task(80, 2, seed=13)
    m = json.loads(json.dumps(compute_metrics(p2, y2, ["normal", "pneumonia"], n_bootstrap=50)))
    out = io.StringIO()
    Console(file=out, width=140).print(format_metrics(m))
    text = out.getvalue()
    for needle in ("normal", "pneumonia", "youden", "balanced accuracy", f"{m['accuracy']:.3f}",
                   f"{m['ci95']['auc_macro'][0]:.3f}", str(sum(m["confusion_matrix"][1]))):
        assert needle in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probs": np.full((4, 2), 0.5), "targets": np.zeros(3, int)}, "targets: expected shape"),
        ({"probs": np.full(4, 0.5), "targets": np.zeros(4, int)}, "probs: expected class probabilities"),
        ({"probs": np.array([[np.nan, 1.0], [0.5, 0.5]]), "targets": np.zeros(2, int)}, "NaN"),
        ({"probs": np.full((2, 2), 0.5), "targets": np.array([0, 2])}, r"targets: class indices .* \[0, 1\]"),
        ({"probs": np.full((2, 2), 0.5), "targets": np.array([-1, 0])}, "targets: class indices"),
        ({"probs": np.full((2, 2), 0.5), "targets": np.array([0.5, 1.0])}, "non-integer"),
        ({"probs": np.zeros((0, 2)), "targets": np.zeros(0, int)}, "N == 0"),
        ({"probs": np.array([[2.0, -1.0]]), "targets": np.zeros(1, int)}, r"\[0, 1\]"),
        ({"probs": np.full((2, 2), 0.7), "targets": np.zeros(2, int)}, "sum to 1"),
        ({"probs": np.full((2, 2), 0.5), "targets": np.zeros(2, int), "class_names": ["a"]}, "class_names"),
        ({"probs": np.full((2, 2), 0.5), "targets": np.zeros(2, int), "val_probs": np.full((2, 2), 0.5)},
         "val_probs / val_targets"),
        ({"probs": np.full((2, 2), 0.5), "targets": np.zeros(2, int), "val_probs": np.full((2, 3), 1 / 3),
          "val_targets": np.zeros(2, int)}, "val_probs: expected 2 columns"),
        ({"probs": np.full((2, 2), 0.5), "targets": np.zeros(2, int), "n_bootstrap": -1}, "n_bootstrap"),
    ],
)
def test_input_errors_are_one_line(kwargs: dict, match: str) -> None:
    kwargs.setdefault("class_names", ["a", "b"])
    with pytest.raises(MedliteError, match=match) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compute_metrics(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(MedliteError, match="both classes"):
        youden_threshold(np.array([0.2, 0.8]), np.array([1, 1]))


def test_a_model_that_predicts_one_class_is_named_collapsed() -> None:
    targets = np.repeat([0, 1, 2], [19, 12, 9])
    p = np.tile([[0.2, 0.7, 0.1]], (40, 1)) + np.linspace(0, 0.01, 40)[:, None] * [[1, -1, 0]]
    with pytest.warns(UserWarning, match="predicts 'b' for all 40 images, so its accuracy is just that class's share"):
        m = compute_metrics(p, targets, ["a", "b", "c"], n_bootstrap=50)
    assert m["accuracy"] == pytest.approx(12 / 40) and m["ci95"]["accuracy"] == [pytest.approx(0.3)] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model that predicts two classes gets no such warning
        compute_metrics(np.eye(3)[np.minimum(targets, 1)] * 0.9 + 0.1 / 3, targets, ["a", "b", "c"], n_bootstrap=0)
