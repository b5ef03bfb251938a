"""The Python API behind ``medlite explain``: files written for images and runs, and explain_metrics.json."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from medlite.errors import DataError, MedliteError, ModelError
from medlite.explain import EXPLAIN_METRICS, evaluate_explanations, explain_images, select_images

CLASSES = ["Covid-19", "Emphysema", "Normal", "Pneumonia-Bacterial", "Pneumonia-Viral", "Tuberculosis"]


@pytest.fixture(scope="module")
def xray_file(tmp_path_factory):
    """A non-square 8-bit PNG 'X-ray' (70 x 110) with a bright blob right of centre."""
    rng = np.random.default_rng(0)
    img = (60 + 40 * rng.random((70, 110))).astype(np.uint8)
    cv2.circle(img, (75, 30), 9, 230, -1)
    path = tmp_path_factory.mktemp("images") / "chest_01.png"
    cv2.imwrite(str(path), img)
    return path


def test_explain_images_writes_overlay_map_and_grid(phantom_run, xray_file, tmp_path) -> None:
    results = explain_images([phantom_run, phantom_run], [xray_file], methods=("gradcam", "scorecam"),
                             out=tmp_path, batch_size=8)
    assert len(results) == 4  # 1 image x 2 runs x 2 methods
    assert {r["run"] for r in results} == {str(phantom_run)}
    first = results[0]
    assert first["method"] == "gradcam" and first["layer"] == "stages.3" and first["target_name"] in CLASSES
    overlay = cv2.imread(first["overlay"])
    assert overlay.shape == (70, 110, 3)  # original geometry, not the 48 px model input
    saliency = np.load(first["map"])
    assert saliency.shape == (70, 110) and saliency.dtype == np.float32
    assert 0 <= saliency.min() and saliency.max() <= 1
    folder = tmp_path / "chest_01"
    assert sorted(p.name for p in folder.glob("*.png")) == [
        "grid.png", "hxr-2_gradcam.png", "hxr-2_scorecam.png", "hxr_gradcam.png", "hxr_scorecam.png"]
    grid = cv2.imread(str(folder / "grid.png"))
    assert grid.shape[0] > 200 and grid.shape[1] > grid.shape[0]  # 2 rows x 3 columns
    assert json.loads((tmp_path / "explanations.json").read_text()) == results
    # two rows of one model: identical maps
    assert np.array_equal(np.load(folder / "hxr_scorecam.npy"), np.load(folder / "hxr-2_scorecam.npy"))


def test_explain_target_by_name_and_index(phantom_run, xray_file, tmp_path) -> None:
    by_name = explain_images(phantom_run, xray_file, target="Tuberculosis", out=tmp_path / "a")
    by_index = explain_images(phantom_run, [xray_file], target="5", out=tmp_path / "b")
    assert by_name[0]["target"] == by_index[0]["target"] == 5
    assert np.array_equal(np.load(by_name[0]["map"]), np.load(by_index[0]["map"]))


def test_explain_errors_are_one_line(phantom_run, xray_file, tmp_path) -> None:
    with pytest.raises(MedliteError, match="unknown method 'gradcam\\+\\+'.*gradcam, scorecam, lime"):
        explain_images(phantom_run, xray_file, methods=["gradcam++"], out=tmp_path)
    with pytest.raises(MedliteError, match="target: 'Flu'.*0=Covid-19"):
        explain_images(phantom_run, xray_file, target="Flu", out=tmp_path)
    with pytest.raises(ModelError, match="valid names: .*stages"):
        explain_images(phantom_run, xray_file, layer="stage.3", out=tmp_path)
    with pytest.raises(DataError, match="no such image"):
        explain_images(phantom_run, tmp_path / "missing.png", out=tmp_path)


def test_select_images_is_run_independent() -> None:
    keys = [f"class/img_{i:03d}" for i in range(50)]
    picked = select_images(keys, 10)
    assert len(picked) == 10 and np.all(np.diff(picked) > 0)
    shuffled = list(reversed(keys))
    assert sorted(shuffled[i] for i in select_images(shuffled, 10)) == sorted(keys[i] for i in picked)


def test_evaluate_writes_metrics_for_every_method(phantom_run, tmp_path) -> None:
    metrics = evaluate_explanations(phantom_run, n=4, methods=("gradcam", "scorecam"), out=tmp_path,
                                    steps=10, batch_size=4, method_options={"scorecam": {"max_channels": 8}})
    stored = json.loads((tmp_path / EXPLAIN_METRICS).read_text())
    assert stored == json.loads(json.dumps(metrics))
    assert metrics["n_images"] == 4 and metrics["model"] == "hybridnet_xr_50"
    assert 0 < metrics["n_with_mask"] <= 4  # phantoms carry lesion masks ("Normal" ones are empty)
    assert 0 < metrics["mask_area_fraction"]["mean"] < 0.5
    for method in ("gradcam", "scorecam"):
        entry = metrics["methods"][method]
        for key in ("deletion_auc", "insertion_auc", "road_combined", "pointing_game", "energy_in_mask"):
            assert entry[key]["n"] > 0 and entry[key]["mean"] is not None, key
        assert 0 <= entry["deletion_auc"]["mean"] <= 1 and 0 <= entry["energy_in_mask"]["mean"] <= 1
        assert len(entry["deletion_curve"]) == 11
    assert metrics["settings"]["method_options"] == {"scorecam": {"max_channels": 8}}
    again = evaluate_explanations(phantom_run, n=4, methods="gradcam", out=tmp_path / "again", steps=10)
    assert again["images"] == metrics["images"]  # same images on every call / model
    assert again["methods"]["gradcam"]["deletion_auc"] == metrics["methods"]["gradcam"]["deletion_auc"]


def test_evaluate_with_a_masks_folder(phantom_run, tmp_path) -> None:
    from medlite.data.synthetic import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "phantoms", classes="chestx6", per_class=2, size=48)
    shutil.move(str(data / "masks"), str(tmp_path / "lesions"))  # the folder source no longer sees masks
    metrics = evaluate_explanations(phantom_run, data=str(data), n=6, masks=tmp_path / "lesions",
                                    methods="gradcam", metrics=("localisation",))
    assert metrics["n_images"] == 6 and metrics["n_with_mask"] >= 4
    entry = metrics["methods"]["gradcam"]
    assert entry["energy_in_mask"]["n"] == metrics["n_with_mask"] and "deletion_auc" not in entry
    assert (phantom_run / "explain-phantoms" / EXPLAIN_METRICS).is_file()
    with pytest.warns(UserWarning, match="no mask matched"):
        evaluate_explanations(phantom_run, data=str(data), n=2, masks=tmp_path, methods="gradcam",
                              metrics=("localisation",), out=tmp_path / "nomask")
    with pytest.raises(MedliteError, match="target"):
        evaluate_explanations(phantom_run, n=2, target="truth")
    with pytest.raises(MedliteError, match="metrics"):
        evaluate_explanations(phantom_run, n=2, metrics=("speed",))
