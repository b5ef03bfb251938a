"""``medlite calibrate`` for runs trained before calibration, and ``medlite evaluate --ood`` (the gate's AUROC).

The OOD sets are the issue's: scikit-image's bundled photographs, noise, rendered text, and phantoms of another
layout (the run's own phantoms rotated by 90 degrees; phantoms of another class set come from the same renderer
with the same findings and are in-distribution images, see BENCHMARKS.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from typer.testing import CliRunner

from medlite import api
from medlite.cli import app
from medlite.data.synthetic import generate_phantoms
from medlite.errors import MedliteError

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "page", "rocket", "horse", "hubble_deep_field")


@pytest.fixture(scope="module")
def ood_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of PNGs: photographs, uniform noise, text pages and rotated chestx6 phantoms."""
    root = tmp_path_factory.mktemp("ood")
    rng = np.random.default_rng(7)
    folders = {name: root / name for name in ("photos", "noise", "text", "rotated")}
    for folder in folders.values():
        folder.mkdir()
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = img.astype(np.uint8) * 255 if img.dtype == bool else img
        cv2.imwrite(str(folders["photos"] / f"{name}.png"), img if img.ndim == 2 else img[..., 2::-1])
    for i in range(12):
        cv2.imwrite(str(folders["noise"] / f"{i}.png"), rng.integers(0, 256, (96, 96), dtype=np.uint8))
        page = np.full((160, 128), 255, np.uint8)
        for line in range(9):
            words = "".join(rng.choice(list("abcdefghij klmnop"), 14))
            cv2.putText(page, words, (4, 16 + 16 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1)
        cv2.imwrite(str(folders["text"] / f"{i}.png"), page)
    for i, img in enumerate(generate_phantoms("chestx6", per_class=2, size=48, seed=11).images):
        cv2.imwrite(str(folders["rotated"] / f"{i}.png"), np.ascontiguousarray(np.rot90(img)))
    return folders


def test_evaluate_ood_flags_photographs_noise_text_and_rotated_phantoms(trained_run: tuple[Path, Any],
                                                                         ood_sets: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    run, _ = trained_run
    result = api.evaluate_ood(run, list(ood_sets.values()), out=tmp_path / "ood")
    info = json.loads((run / "run.json").read_text())
    assert result["threshold"] == pytest.approx(info["ood_gate"]["threshold"])
    for name, folder in ood_sets.items():
        row = result["ood"][name]
        assert row["n"] == len(list(folder.iterdir()))
        assert row["auroc"] >= 0.95, (name, row)
        assert row["flagged"] >= 0.9, (name, row)
    ind = result["in_distribution"]
    assert ind["flagged"] <= 0.2 and ind["n"] == ind["n_kept"] + round(ind["flagged"] * ind["n"])
    assert 0.0 <= ind["accuracy_kept"] <= 1.0
    written = json.loads((tmp_path / "ood" / "metrics.json").read_text())
    assert written["ood"]["photos"]["auroc"] == pytest.approx(result["ood"]["photos"]["auroc"])
    for plot in ("ood_scores.png", "risk_coverage.png"):
        assert (tmp_path / "ood" / "plots" / plot).stat().st_size > 1000


def test_evaluate_ood_from_the_cli(trained_run: tuple[Path, Any], ood_sets: dict[str, Path]) -> None:
    run, _ = trained_run
    result = CliRunner().invoke(app, ["evaluate", str(run), "--ood", str(ood_sets["noise"]),
                                      "--ood", str(ood_sets["text"])])
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "noise" in result.output and "eval-ood" in result.output
    assert (run / "eval-ood" / "metrics.json").is_file()
    refused = CliRunner().invoke(app, ["evaluate", str(run), "--ood", str(run / "no-such-folder")])
    assert refused.exit_code == 2 and "--ood" in refused.output and "no-such-folder" in refused.output


def test_calibrate_gives_an_old_run_what_training_gives_a_new_one(trained_run: tuple[Path, Any],
                                                                  ood_sets: dict[str, Path], tmp_path: Path) -> None:
    run, _ = trained_run
    old = tmp_path / "old-run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("eval-*", "explain*", "export"))
    fitted = json.loads((run / "run.json").read_text())
    stripped = {k: v for k, v in fitted.items() if k not in ("calibration", "ood_gate")}
    (old / "run.json").write_text(json.dumps(stripped))
    (old / "ood_gate.safetensors").unlink()
    metrics = json.loads((old / "metrics.json").read_text())
    (old / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k not in ("calibration", "ood")}))
    with pytest.raises(MedliteError, match="medlite calibrate"):
        api.evaluate_ood(old, [ood_sets["noise"]])

    result = CliRunner().invoke(app, ["calibrate", str(old)])
    assert result.exit_code == 0, result.output
    assert "ECE" in result.output and "temperature T" in result.output
    refitted = json.loads((old / "run.json").read_text())
    assert refitted["calibration"]["temperature"] == pytest.approx(fitted["calibration"]["temperature"], rel=1e-6)
    assert refitted["ood_gate"]["threshold"] == pytest.approx(fitted["ood_gate"]["threshold"], rel=1e-6)
    rewritten = json.loads((old / "metrics.json").read_text())
    assert rewritten["calibration"]["after"]["ece"] == pytest.approx(metrics["calibration"]["after"]["ece"])
    assert rewritten["accuracy"] == pytest.approx(metrics["accuracy"])
    assert "When not to trust a result" in (old / "model_card.md").read_text()
    assert api.evaluate_ood(old, [ood_sets["noise"]])["ood"]["noise"]["auroc"] >= 0.95


def test_calibrate_warns_that_an_earlier_export_is_stale(trained_run: tuple[Path, Any], tmp_path: Path) -> None:
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval-*", "explain*", "export"))
    (copy / "export").mkdir()
    (copy / "export" / "model.onnx").write_bytes(b"an export made earlier")
    with pytest.warns(UserWarning, match="export again: medlite export"):
        metrics = api.calibrate(copy)
    assert metrics["stale_exports"] == [str(copy / "export" / "model.onnx")]


def test_evaluate_keeps_what_training_recorded(trained_run: tuple[Path, Any], tmp_path: Path) -> None:
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval-*", "explain*", "export"))
    api.evaluate(copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["calibration"]["method"] == "temperature" and "flagged" in metrics["ood"]


def test_ood_sources_get_short_unique_names() -> None:
    from medlite.workflows.ood_eval import _names

    assert _names(["/data/covid-qu-ex/train", "/a/photos", "/b/photos", "synthetic:binary"]) == [
        "covid-qu-ex/train", "photos", "photos (2)", "synthetic:binary"]
