"""Shortcut audit: how much accuracy a model gets from a class-per-folder X-ray set without looking at the lungs.

Writes two masked copies of SOURCE (a class-per-folder image set such as ChestX6) under ``--work``, each image
resized to ``--img-size`` first:

* ``no-lungs``: a fixed central box blacked out (``--box`` = fraction of the side kept as margin on the left,
  right and top; the box reaches to the bottom margin). On a PA chest film the box covers both lungs and the
  heart; what is left is shoulders, the neck, corner text and burned-in markers.
* ``border``: everything blacked out except an outer frame ``--frame`` of the side wide: the collimation edge,
  corner labels and the film's own border.

Then trains the same recipe (``--model``, ``--epochs``, ...) on the full images and on both copies, each with the
split drawn the same way (stratified, same seed, same file names), and prints a Markdown table. A fixed mask
(rather than a lung segmenter trained on COVID-QU-Ex masks) keeps the audit cheap and model-free; it is cruder:
it also hides the mediastinum, and on rotated or off-centre films it may leave a strip of lung visible.

    python benchmarks/shortcut_audit.py ../shared/data/chestx6/train --work /tmp/audit --img-size 64 --epochs 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

import medlite
from medlite.data.files import walk_images
from medlite.data.imageio import read_image


def central_box_mask(size: int, margin: float) -> np.ndarray:
    """bool (size, size): True inside the central box (rows from ``margin`` to ``1 - margin / 2``)."""
    lo, hi_r, hi_c = int(size * margin), int(size * (1 - margin / 2)), int(size * (1 - margin))
    mask = np.zeros((size, size), bool)
    mask[lo:hi_r, lo:hi_c] = True
    return mask


def frame_mask(size: int, frame: float) -> np.ndarray:
    """bool (size, size): True on the outer frame ``frame`` of the side wide."""
    w = max(1, int(size * frame))
    mask = np.ones((size, size), bool)
    mask[w:size - w, w:size - w] = False
    return mask


def write_variant(source: Path, dest: Path, size: int, keep: np.ndarray | None) -> Path:
    """Write every image of ``source`` resized to ``size`` px PNG under ``dest`` (same class folders), with the
    pixels outside ``keep`` set to 0 (``keep=None``: unmasked). Skips the work when ``dest`` is complete."""
    files = walk_images(source)
    done = dest / ".complete"
    if done.exists():
        return dest
    for file in files:
        img = cv2.resize(read_image(file), (size, size), interpolation=cv2.INTER_AREA)
        if keep is not None:
            img = np.where(keep, img, 0.0)
        out = dest / file.relative_to(source).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), np.round(img * 255).astype(np.uint8))
    done.touch()
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="class-per-folder image set")
    parser.add_argument("--work", type=Path, required=True, help="folder for the masked copies and the runs")
    parser.add_argument("--model", default="hybridnet_xr_50")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--box", type=float, default=0.12, help="margin around the blacked-out central box")
    parser.add_argument("--frame", type=float, default=0.08, help="width of the kept outer frame")
    args = parser.parse_args()

    size = args.img_size
    variants = {
        "full image": None,
        "lungs blacked out (central box)": ~central_box_mask(size, args.box),
        "border frame only": frame_mask(size, args.frame),
    }
    rows = []
    for label, keep in variants.items():
        slug = label.split(" ")[0]
        data = write_variant(args.source, args.work / f"data-{slug}-{size}", size, keep)
        started = time.perf_counter()
        result = medlite.train(out=args.work / f"run-{slug}-{args.model}-{size}", source=str(data),
                               model=args.model, img_size=size, epochs=args.epochs, batch_size=args.batch_size,
                               lr=args.lr, seed=args.seed, progress=False)
        m = result.metrics
        visible = 1.0 if keep is None else float(keep.mean())
        rows.append(f"| {label} | {visible:.0%} | {m['accuracy']:.3f} [{m['ci95']['accuracy'][0]:.3f}, "
                    f"{m['ci95']['accuracy'][1]:.3f}] | {m['balanced_accuracy']:.3f} | "
                    f"{m['auc_macro'] if m['auc_macro'] is None else round(m['auc_macro'], 3)} | {m['n']} | "
                    f"{(time.perf_counter() - started) / 60:.1f} |")
        print(rows[-1], flush=True)
    print(f"\n{args.model}, {size} px, {args.epochs} epochs, seed {args.seed}")
    print("| input | pixels visible | accuracy [95% CI] | balanced acc | macro AUC | n test | wall (min) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
