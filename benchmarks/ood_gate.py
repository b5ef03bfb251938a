"""Which OOD score and which calibration should medlite use by default? Measured on a phantom-trained model.

Usage::

    python benchmarks/ood_gate.py OUT [--epochs 20] [--per-class 200] [--size 64] [--model hybridnet_xr_50]
        [--seed 0]

Trains (or reuses, when ``OUT/run/model.safetensors`` exists) a supervised ``--model`` on ChestX6 phantoms
(``--per-class`` per class, 60/20/20 train/val/test split, ``--size`` px), then takes the pooled features
and logits of its train / val / test images and of out-of-distribution sets, all preprocessed exactly as the
run's images (``preprocess_image`` with the run's settings, then the model's mean/std):

* ``photos``: scikit-image's bundled photographs (astronaut, coffee, chelsea, camera, rocket, ...) in gray,
  whole and as 10 random square crops each;
* ``noise``: uniform and Gaussian noise images;
* ``text``: rendered text (``cv2.putText``) on a white page;
* ``pediatric3`` / ``binary``: phantoms of the other class sets (seed 1); the same renderer draws them, so
  they show how the gate treats *new images of the training kind*;
* ``phantoms-rot90`` / ``phantoms-inverted``: test-split-like phantoms of another layout (rotated a quarter
  turn; negative film, as a misread MONOCHROME1 DICOM).

Mahalanobis (pooled features, shared Ledoit-Wolf covariance), energy and max-softmax gates are fitted on the
training split with the threshold at the validation split's 99th percentile. Reported per OOD set, against
the test split: AUROC and FPR at 95 % TPR (OOD = positive), the fraction flagged at the threshold; and the
false-refusal rate on the test split. Calibration: temperature scaling vs isotonic regression fitted on
validation logits, ECE (15 bins) / Brier / NLL / accuracy on the test split. Writes ``OUT/results.json`` and
plots (reliability, risk-coverage, score histograms) to ``OUT/plots``, and prints markdown tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from _runner import train_in_process

from medlite.data.prepared import prepare_data
from medlite.data.preprocess import preprocess_image
from medlite.data.synthetic import generate_phantoms
from medlite.metrics.calibration import Calibrator, calibration_summary, plot_reliability, reliability_bins
from medlite.metrics.ood import (
    OOD_METHODS,
    OODGate,
    fpr_at_tpr,
    ood_auroc,
    plot_risk_coverage,
    plot_score_histograms,
    risk_coverage,
    selective_accuracy,
)
from medlite.models.heads import features_and_logits
from medlite.models.inputs import normalise_batch
from medlite.rundir import layout
from medlite.rundir.store import load_run_model
from medlite.utils import atomic

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "hubble_deep_field", "immunohistochemistry",
          "coins", "moon", "clock", "brick", "grass", "gravel", "retina", "cell")
CROPS_PER_PHOTO = 10
WORDS = ("patient", "report", "chest", "film", "normal", "findings", "impression", "lung", "left", "right",
         "heart", "size", "no", "acute", "disease", "2024", "dr", "signed", "page", "of")


@torch.inference_mode()
def _embed(model: torch.nn.Module, images: np.ndarray, in_chans: int, batch: int = 128) -> tuple[np.ndarray, ...]:
    """Pooled features (N, D) and logits (N, C) of uint8 (N, S, S) images, normalised as predict_logits does."""
    feats, logits = [], []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch]))[:, None].float() / 255.0
        f, z = features_and_logits(model, normalise_batch(x, model.cfg.mean, model.cfg.std, in_chans))
        feats.append(f.double().numpy())
        logits.append(z.double().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_RGB2GRAY)  # read_image's BT.601
    return np.clip(img, 0.0, 1.0)


def _photos(rng: np.random.Generator) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = _gray(getattr(skimage.data, name)())
        out.append(img)
        h, w = img.shape
        for _ in range(CROPS_PER_PHOTO):
            side = int(min(h, w) * rng.uniform(0.4, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = img[top:top + side, left:left + side]
            out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return out


def _noise(rng: np.random.Generator, n: int, size: int = 256) -> list[np.ndarray]:
    uniform = [rng.random((size, size), dtype=np.float32) for _ in range(n // 2)]
    gauss = [np.clip(rng.normal(rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.25), (size, size)), 0, 1)
             for _ in range(n - n // 2)]
    return uniform + [g.astype(np.float32) for g in gauss]


def _text_pages(rng: np.random.Generator, n: int, size: int = 256) -> list[np.ndarray]:
    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_PLAIN)
    pages = []
    for _ in range(n):
        page = np.full((size, size), 255, np.uint8)
        scale, y = rng.uniform(0.4, 1.0), int(rng.integers(15, 30))
        while y < size - 5:
            line = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))
            cv2.putText(page, line, (int(rng.integers(2, 20)), y), fonts[int(rng.integers(len(fonts)))], scale,
                        0, int(rng.integers(1, 3)), cv2.LINE_AA)
            y += int(30 * scale + rng.integers(4, 14))
        pages.append(page.astype(np.float32) / 255.0)
    return pages


def _ood_sets(cached_test: np.ndarray, size: int, seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed + 1000)
    test = [img.astype(np.float32) / 255.0 for img in cached_test]
    sets = {
        "photos": _photos(rng),
        "noise": _noise(rng, 200),
        "text": _text_pages(rng, 200),
        "pediatric3": [i.astype(np.float32) / 255.0 for i in generate_phantoms("pediatric3", 70, 128, seed + 1).images],
        "binary": [i.astype(np.float32) / 255.0 for i in generate_phantoms("binary", 100, 128, seed + 1).images],
        "phantoms-rot90": [np.ascontiguousarray(np.rot90(i)) for i in test],
        "phantoms-inverted": [1.0 - i for i in test],
    }
    return sets


def _resampled_refusals(val: np.ndarray, test: np.ndarray, repeats: int = 2000) -> dict[str, float]:
    """False-refusal rate over random re-splits of val + test into a threshold half and a measured half.

    One split of a few hundred images gives a noisy 99th percentile; this shows how much of a measured rate
    is the luck of that split.
    """
    rng, pool, rates = np.random.default_rng(0), np.r_[val, test], []
    for _ in range(repeats):
        order = rng.permutation(pool.size)
        rates.append(np.mean(pool[order[val.size:]] > np.quantile(pool[order[:val.size]], 0.99)))
    return {"mean": float(np.mean(rates)), "sd": float(np.std(rates)), "p05": float(np.quantile(rates, 0.05)),
            "p95": float(np.quantile(rates, 0.95))}


def _paired_bootstrap(probs: dict[str, np.ndarray], labels: np.ndarray, pairs: list[tuple[str, str]],
                      repeats: int = 1000) -> dict[str, dict[str, list[float]]]:
    """95 % percentile-bootstrap intervals of ``metric(a) - metric(b)`` over test images, per pair (a, b)."""
    rng, n = np.random.default_rng(0), len(labels)
    diffs: dict[str, dict[str, list[float]]] = {f"{a} - {b}": {"ece": [], "brier": [], "nll": []} for a, b in pairs}
    for _ in range(repeats):
        idx = rng.integers(0, n, n)
        summaries = {m: calibration_summary(p[idx], labels[idx]) for m, p in probs.items()}
        for a, b in pairs:
            for key in ("ece", "brier", "nll"):
                diffs[f"{a} - {b}"][key].append(summaries[a][key] - summaries[b][key])
    return {pair: {key: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] for key, v in d.items()}
            for pair, d in diffs.items()}


def _gate_rows(gates: dict[str, OODGate], emb: dict[str, tuple[np.ndarray, np.ndarray]], ood: list[str],
               test_correct: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    results: dict[str, Any] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for method, gate in gates.items():
        s = {name: gate.score(features=f, logits=z) for name, (f, z) in emb.items()}
        gate.calibrate_threshold(s["val"], 0.99)
        scores[method] = s
        row: dict[str, Any] = {"threshold": gate.threshold,
                               "false_refusal_test": float(np.mean(gate.flag(s["test"]))),
                               "false_refusal_val": float(np.mean(gate.flag(s["val"]))),
                               "false_refusal_resampled": _resampled_refusals(s["val"], s["test"]),
                               "selective_test": selective_accuracy(test_correct, s["test"], gate.threshold)}
        for name in ood:
            row[name] = {"auroc": ood_auroc(s["test"], s[name]), "fpr95": fpr_at_tpr(s["test"], s[name], 0.95),
                         "flagged": float(np.mean(gate.flag(s[name]))), "n": int(len(s[name]))}
        results[method] = row
    return results, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="hybridnet_xr_50")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    run = train_in_process(args.out / "run", source="synthetic:chestx6", model=args.model, epochs=args.epochs,
                 size=args.size, synthetic_per_class=args.per_class, val_frac=0.2, test_frac=0.2,
                 seed=args.seed)
    model, cfg, info = load_run_model(run)
    data = prepare_data(cfg, manifest=run / layout.SPLITS, progress=False)
    in_chans = info["in_chans"]
    emb, labels = {}, {}
    for split in ("train", "val", "test"):
        idx = data.indices(split, labelled_only=(split == "train"))
        emb[split], labels[split] = _embed(model, data.cached.images[idx], in_chans), data.cached.labels[idx]
    started = time.perf_counter()
    for name, images in _ood_sets(data.cached.images[data.indices("test", labelled_only=False)], args.size,
                                  args.seed).items():
        emb[name] = _embed(model, np.stack([preprocess_image(img, cfg.preprocess) for img in images]), in_chans)
    ood = [k for k in emb if k not in ("train", "val", "test")]
    print(f"features of {', '.join(f'{k} {len(v[0])}' for k, v in emb.items())} "
          f"({time.perf_counter() - started:.0f} s for the OOD sets); D = {emb['train'][0].shape[1]}", flush=True)

    # ---- calibration: fitted on validation logits, measured on test logits
    calib: dict[str, Any] = {}
    diagrams, test_probs = {}, {}
    for method in ("none", "temperature", "isotonic"):
        cal = Calibrator.fit(emb["val"][1], labels["val"], method=method)
        p = test_probs[method] = cal.apply(emb["test"][1])
        calib[method] = {**calibration_summary(p, labels["test"]),
                         "accuracy": float(np.mean(p.argmax(1) == labels["test"])),
                         "true_class_p0": int(np.sum(p[np.arange(len(p)), labels["test"]] == 0.0)),
                         "changed_predictions": int(np.sum(p.argmax(1) != emb["test"][1].argmax(1)))}
        if method == "temperature":
            calib[method]["T"] = cal.temperature
        diagrams[{"none": "uncalibrated", "temperature": f"temperature (T = {cal.temperature:.2f})",
                  "isotonic": "isotonic"}[method]] = reliability_bins(p, labels["test"])
    plot_reliability(diagrams, args.out / "plots" / "reliability_test.png")
    calib_ci = _paired_bootstrap(test_probs, labels["test"], [("temperature", "none"), ("isotonic", "temperature")])

    # ---- OOD gates: fitted on the training split, threshold at the validation 99th percentile
    gates = {m: OODGate.fit(emb["train"][0], labels["train"], emb["train"][1], method=m) for m in OOD_METHODS}
    test_correct = emb["test"][1].argmax(1) == labels["test"]
    gate_results, scores = _gate_rows(gates, emb, ood, test_correct)
    for method, s in scores.items():
        plot_score_histograms(s["test"], {k: s[k] for k in ood}, args.out / "plots" / f"scores_{method}.png",
                              threshold=gates[method].threshold, title=f"{method} scores (test = in-distribution)")
    plot_risk_coverage({m: risk_coverage(test_correct, s["test"]) for m, s in scores.items()},
                       args.out / "plots" / "risk_coverage_test.png")

    summary = {"model": args.model, "epochs": args.epochs, "per_class": args.per_class, "size": args.size,
               "seed": args.seed, "n": {k: int(len(v[0])) for k, v in emb.items()},
               "num_features": int(emb["train"][0].shape[1]),
               "test_accuracy": float(np.mean(test_correct)), "calibration": calib,
               "calibration_diff_ci95": calib_ci, "ood": gate_results}
    atomic.write_json(args.out / "results.json", summary)

    print(f"\n{args.model}, {args.epochs} epochs, ChestX6 phantoms {args.size} px: test accuracy "
          f"{summary['test_accuracy']:.3f} (n = {len(test_correct)})\n")
    print("| calibration (fitted on val) | ECE | Brier | NLL | accuracy | true class p = 0 | predictions changed |")
    print("|---|---|---|---|---|---|---|")
    for method, row in calib.items():
        name = f"temperature (T = {row['T']:.3f})" if method == "temperature" else method
        print(f"| {name} | {row['ece']:.4f} | {row['brier']:.4f} | {row['nll']:.4f} | {row['accuracy']:.3f} | "
              f"{row['true_class_p0']} | {row['changed_predictions']} |")
    print("\n| paired bootstrap, test (1000 resamples) | ECE 95 % CI | Brier 95 % CI | NLL 95 % CI |")
    print("|---|---|---|---|")
    for pair, ci in calib_ci.items():
        cells = [f"[{ci[k][0]:+.4f}, {ci[k][1]:+.4f}]" for k in ("ece", "brier", "nll")]
        print(f"| {pair} | " + " | ".join(cells) + " |")
    print("\n| OOD set (n) | " + " | ".join(f"{m} AUROC / FPR@95 / flagged" for m in OOD_METHODS) + " |")
    print("|---|" + "---|" * len(OOD_METHODS))
    for name in ood:
        cells = [f"{gate_results[m][name]['auroc']:.3f} / {gate_results[m][name]['fpr95']:.3f} / "
                 f"{gate_results[m][name]['flagged']:.2f}" for m in OOD_METHODS]
        print(f"| {name} ({gate_results[OOD_METHODS[0]][name]['n']}) | " + " | ".join(cells) + " |")
    print("\n| gate | threshold | false refusals test (val) | re-split mean +- sd [5-95 %] | accuracy kept / all "
          "| coverage |\n|---|---|---|---|---|---|")
    for m in OOD_METHODS:
        r, sel, rs = gate_results[m], gate_results[m]["selective_test"], gate_results[m]["false_refusal_resampled"]
        print(f"| {m} | {r['threshold']:.4g} | {r['false_refusal_test']:.3f} ({r['false_refusal_val']:.3f}) | "
              f"{rs['mean']:.3f} +- {rs['sd']:.3f} [{rs['p05']:.3f}, {rs['p95']:.3f}] | "
              f"{sel['accuracy_kept']:.3f} / {sel['accuracy_all']:.3f} | {sel['coverage']:.3f} |")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'plots'}")


if __name__ == "__main__":
    main()
