"""Every CLI command through typer's CliRunner, including the one-line error exits (code 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medlite.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip() if result.stderr else result.output.strip()
    assert "Traceback" not in result.output
    # Warnings before it are fine (one line each); the error itself is the last line, and only one.
    lines = [line for line in text.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error:") and text.endswith(lines[0]), text
    text = lines[0]
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "phantoms"
    result = invoke("data", "synth", out, "--classes", "pediatric3", "--per-class", "6", "--size", "32")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli-runs") / "run"
    result = invoke("train", "--data", phantoms / "manifest.csv", "--model", "hybridnet_xr_50", "--out", run,
                    "--epochs", "1", "--img-size", "32", "--batch-size", "4", "--val-frac", "0.2",
                    "--test-frac", "0.3")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    return run


def _commands(group, prefix=()):
    """Every command path of the typer app, read from its click group (so a new command is covered)."""
    import typer.main

    click_group = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, command in click_group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))


def test_help_on_every_command():
    commands = [(), *_commands(app)]
    assert {("export",), ("predict",), ("explain",), ("data", "inspect")} <= set(commands)
    for args in commands:
        result = invoke(*args, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, args


def test_models_lists_matching_names():
    result = invoke("models", "resnet*")
    assert result.exit_code == 0
    assert "resnet18" in result.output and "resnet50" in result.output and "mobilenet" not in result.output
    assert "11,173,318" in result.output  # resnet18 with 6 classes and 1 channel


def test_synth_writes_images_masks_and_manifest(phantoms):
    assert sorted(p.name for p in phantoms.iterdir()) == ["bacterial", "manifest.csv", "masks", "normal", "viral"]
    assert len(list((phantoms / "viral").glob("*.png"))) == 6
    assert len(list((phantoms / "masks" / "viral").glob("*.png"))) == 6


def test_inspect_json_counts_classes(phantoms):
    result = invoke("data", "inspect", phantoms, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["counts"] == {"bacterial": 6, "normal": 6, "viral": 6}


def test_inspect_says_how_dicom_files_would_be_windowed(tmp_path):
    from dicom_writer import write_dicom

    for cls, window in (("a", (1100.0, 800.0)), ("b", None)):
        (tmp_path / cls).mkdir()
        write_dicom(tmp_path / cls / "x.dcm", np.full((8, 8), 1000, np.uint16), window=window)
    result = invoke("data", "inspect", tmp_path)
    assert result.exit_code == 0, result.output
    assert "DICOM window" in result.output and "--dicom-window header" in result.output  # rich wraps the rest
    summary = json.loads(invoke("data", "inspect", tmp_path, "--json").output)
    assert summary["dicom_window"] == {"mode": "header", "applied": {"auto": 1, "window": 1}}
    result = invoke("data", "inspect", tmp_path, "--dicom-window", "none", "--json")
    assert json.loads(result.output)["dicom_window"] == {"mode": "none", "applied": {"none": 2}}
    assert_one_line_error(invoke("data", "inspect", tmp_path, "--dicom-window", "vendor"), "dicom_window")


def test_train_evaluate_profile_compare(trained, tmp_path):
    result = invoke("evaluate", trained, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] > 0
    assert f"wrote {tmp_path / 'eval' / 'metrics.json'}" in " ".join(result.output.split())
    result = invoke("profile", trained, "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["params"] > 0 and (trained / "profile.json").is_file()
    steps = [line.split(" ", 1)[1] for line in result.stderr.splitlines()]  # "HH:MM:SS what it measures now"
    assert [s.split(": ")[1].split(" ")[0] for s in steps] == ["peak", "training", "latency"], result.stderr
    result = invoke("compare", trained, "--out", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    assert "hybridnet_xr_50" in html and "data:image/png;base64" in html
    assert 'alt="reliability of' in html  # the run's reliability diagram, embedded
    markdown = (tmp_path / "report.md").read_text()
    header, _, row = [line for line in markdown.splitlines() if line.startswith("|")][:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")], strict=True))
    calibrated = json.loads((trained / "metrics.json").read_text())["calibration"]["after"]["ece"]
    assert cells["model"] == "hybridnet_xr_50" and cells["ECE"] == f"{calibrated:.3f}"
    assert cells["OOD flagged"].endswith("%")


def test_class_absent_from_the_test_split_is_reported_not_averaged_away(phantoms, tmp_path):
    import csv

    rows = list(csv.DictReader((phantoms / "manifest.csv").open()))
    for row in rows:  # per class: 3 train, 1 val, 2 test; no viral image in the test split
        k = int(Path(row["path"]).stem.rsplit("_", 1)[1])
        row["split"] = "train" if k < 3 or (row["label"] == "viral" and k != 3) else "val" if k == 3 else "test"
        row["path"] = str(phantoms / row["path"])
        del row["mask"]
    manifest = tmp_path / "split.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "run"
    result = invoke("train", "--data", manifest, "--model", "hybridnet_xr_50", "--out", run, "--epochs", "1",
                    "--img-size", "32", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auc_macro"] is None and metrics["auc_classes"] == ["bacterial", "normal"]
    present = metrics["auc_macro_present"]
    text = " ".join(result.output.split())
    assert f"macro AUC n/a (2 of 3 classes have an AUC, mean {present:.3f}: bacterial, normal)" in text
    card = (run / "model_card.md").read_text()
    assert "Macro AUC (one-vs-rest) n/a" in card and f"2 of 3 classes have an AUC, mean {present:.3f}" in card
    result = invoke("compare", run, "--out", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert f"— ({present:.3f} over 2/3 classes)" in (tmp_path / "report.md").read_text()
    result = invoke("evaluate", run, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "AUC (mean over the 2 classes present)" in result.output


def test_cross_dataset_evaluation(trained, tmp_path):
    other = tmp_path / "other"
    assert invoke("data", "synth", other, "--classes", "pediatric3", "--per-class", "4", "--size", "48",
                  "--seed", "5").exit_code == 0
    result = invoke("evaluate", trained, "--data", other)
    assert result.exit_code == 0, result.output
    metrics = json.loads((trained / "eval-other" / "metrics.json").read_text())
    assert metrics["n"] == 12
    assert f"wrote {trained / 'eval-other' / 'metrics.json'}" in " ".join(result.output.split())


def test_unknown_model_suggests_close_names(phantoms, tmp_path):
    result = invoke("train", "--data", phantoms, "--model", "mobilenet_v3", "--out", tmp_path / "x")
    assert_one_line_error(result, "unknown model 'mobilenet_v3'", "did you mean")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda root: root, "folder is empty"),
        (lambda root: (root / "normal").mkdir() or cv2.imwrite(str(root / "normal" / "a.png"),
                                                                np.zeros((8, 8), np.uint8)) and root,
         "at least 2 classes"),
        (lambda root: root / "missing", "no such file or folder"),
    ],
    ids=["empty-folder", "single-class", "missing-path"],
)
def test_bad_sources_exit_2(tmp_path, make, fragment):
    source = make(tmp_path)
    result = invoke("data", "inspect", source)
    assert_one_line_error(result, fragment)


def test_csv_with_missing_file_is_fatal_when_strict(tmp_path):
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((16, 16), 100, np.uint8))
    (tmp_path / "m.csv").write_text("path,label\na.png,normal\nb.png,pneumonia\ngone.png,normal\n")
    assert invoke("data", "inspect", tmp_path / "m.csv").exit_code == 0
    assert_one_line_error(invoke("data", "inspect", tmp_path / "m.csv", "--strict"), "gone.png")
    (tmp_path / "gone.csv").write_text("path,label\ngone.png,normal\nlost.png,pneumonia\n")
    assert_one_line_error(invoke("data", "inspect", tmp_path / "gone.csv"), "none of its 2 listed image(s) can be "
                          "read", "gone.png: file not found")


def test_train_without_data_is_refused_and_phantom_runs_say_so(tmp_path):
    assert_one_line_error(invoke("train", "--out", tmp_path / "x"), "--data is required", "'synthetic'")
    assert not (tmp_path / "x").exists()
    result = invoke("train", "--data", "synthetic:binary", "--model",
                    "hybridnet_xr_50", "--epochs", "1", "--img-size", "32", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith("warning: training on generated phantoms (synthetic:binary)")
    summary = " ".join(result.stdout.split())
    assert "test accuracy" in summary and "(generated phantoms, not X-rays)" in summary


def test_train_strict_and_warnings_are_one_clean_line(phantoms, tmp_path):
    import csv

    rows = list(csv.DictReader((phantoms / "manifest.csv").open()))
    lines = ["path,label"] + [f"{phantoms / r['path']},{r['label']}" for r in rows] + ["[/nowhere]/x.png,viral"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    args = ("train", "--data", tmp_path / "m.csv", "--model", "hybridnet_xr_50", "--epochs", "1",
            "--img-size", "32")
    # The bracketed path would be rich markup if printed raw; the error shows it as it is.
    assert_one_line_error(invoke(*args, "--out", tmp_path / "s", "--strict"), "file not found: [/nowhere]/x.png")
    assert not (tmp_path / "s").exists()
    result = invoke(*args, "--out", tmp_path / "ok")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "skipped 1 unreadable" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: ") and "--strict" in warned[0], result.stderr
    assert "UserWarning" not in result.stderr and ".py:" not in result.stderr


def test_sixteen_bit_png_is_read(tmp_path):
    for label in ("normal", "pneumonia"):
        (tmp_path / label).mkdir()
        cv2.imwrite(str(tmp_path / label / "x.png"), np.full((20, 24), 40000, np.uint16))
    result = invoke("data", "inspect", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["bit_depth"] == {"16": 2}


def test_resume_without_a_run_is_an_error(tmp_path):
    assert_one_line_error(invoke("train", "--out", tmp_path / "nothing", "--resume"), "not found")


def test_evaluate_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(invoke("evaluate", tmp_path), "not a medlite run directory")


def test_export_predict_and_explain(trained, phantoms, tmp_path):
    result = invoke("export", trained, "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    onnx_file = tmp_path / "export" / "model.onnx"
    assert onnx_file.is_file() and (tmp_path / "export" / "parity.json").is_file()
    assert_one_line_error(invoke("export", trained, "--int8-weights", "int8", "--out", tmp_path / "x"), "add --int8")
    assert not (tmp_path / "x").exists()
    images = phantoms / "viral"
    result = invoke("predict", onnx_file, images, "--out", tmp_path / "pred.csv")
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    assert len(lines) == 7 and "prob_viral" in lines[0]
    long_name = tmp_path / ("x" * 10 + "_a_long_file_name_as_a_pacs_export_writes_it_" + "y" * 30 + ".png")
    shutil.copy(images / "viral_0000.png", long_name)
    result = invoke("predict", onnx_file, long_name)
    assert result.exit_code == 0, result.output
    cells = "".join(line.strip("│ ").split("│")[0].strip() for line in result.output.splitlines() if "│" in line)
    assert long_name.name in cells, result.output  # wrapped over rows, never cut off with an ellipsis
    assert "…" not in result.output
    result = invoke("predict", onnx_file, images / "viral_0000.png", "--cam", tmp_path / "onnx_cams")
    assert result.exit_code == 0, result.output  # the torch-free class activation map of the ONNX model
    assert [p.name for p in (tmp_path / "onnx_cams").rglob("*.png")] == ["model_cam.png"]
    result = invoke("predict", trained, images / "viral_0000.png", "--out", tmp_path / "pred.json", "--cam",
                    tmp_path / "cams")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "pred.json").read_text())["predictions"][0]["status"] == "ok"
    assert list((tmp_path / "cams").rglob("*.png"))
    result = invoke("explain", trained, images / "viral_0001.png", "gradcam", "scorecam", "--out", tmp_path / "maps")
    assert result.exit_code == 0, result.output
    assert [line.split(" ", 1)[1] for line in result.stderr.splitlines()] == [
        f"{method} with {trained.name}: images 1-1 of 1" for method in ("gradcam", "scorecam")]
    assert len(list((tmp_path / "maps").rglob("*.npy"))) == 2
    result = invoke("explain", trained, "--evaluate", "--n", "4", "--method", "gradcam", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "explain_metrics.json").read_text())
    assert "gradcam" in json.dumps(metrics)
    assert [line.split(" ", 1)[1] for line in result.stderr.splitlines() if "gradcam" in line] == [
        f"{trained.name}: gradcam: {what}" for what in ("explaining 4 images", "deletion and insertion curves "
                                                        "(100 steps)", "ROAD")]


def test_explain_without_a_run_is_an_error(tmp_path):
    assert_one_line_error(invoke("explain", tmp_path / "x.png", "gradcam"), "at least one run directory")


def test_low_label_commands(phantoms, trained, tmp_path):
    common = ("--data", phantoms / "manifest.csv", "--epochs", "1", "--img-size", "32", "--batch-size", "4",
              "--split-from", trained)
    teacher = tmp_path / "teacher"
    assert invoke("train", *common, "--model", "hybridnet_xr_150", "--out", teacher).exit_code == 0
    ws = invoke("train", *common, "--model", "hybridnet_xr_50", "--init-select", teacher, "--select-method",
                "random-consistent", "--out", tmp_path / "ws")
    assert ws.exit_code == 0, ws.output
    dual = invoke("train", *common, "--model", "hybridnet_xr_50", "--paradigm", "dual-skd", "--teacher", teacher,
                  "--skd-mode", "mutual", "--out", tmp_path / "dual")
    assert dual.exit_code == 0 and "dual-skd (mutual): kept student" in dual.output, dual.output
    proto = invoke("train", *common, "--model", "squeezenet1_1", "--paradigm", "protonet", "--k-shot", "1",
                   "--q-query", "1", "--episodes-per-epoch", "2", "--eval-episodes", "5", "--out", tmp_path / "proto")
    assert proto.exit_code == 0, proto.output
    base = invoke("evaluate", trained, "--prototypes", "--split", "train", "--k-shot", "1", "--q-query", "1",
                  "--episodes", "10", "--out", tmp_path / "protos")
    assert base.exit_code == 0 and "10 episodes (3-way 1-shot)" in base.output, base.output
    assert (tmp_path / "protos" / "episodic.json").is_file()


def test_low_label_mistakes_are_one_line_errors(phantoms, trained, tmp_path):
    common = ("--data", phantoms / "manifest.csv", "--epochs", "1", "--img-size", "32")
    assert_one_line_error(invoke("train", *common, "--model", "mobilenet_v2", "--init-select", trained, "--out",
                                 tmp_path / "a"), "features.0.0.weight")
    assert not (tmp_path / "a").exists()  # a run that failed before training leaves nothing behind
    assert_one_line_error(invoke("train", *common, "--paradigm", "dual-skd", "--out", tmp_path / "b"),
                          "dual-skd needs one --teacher")
    assert_one_line_error(invoke("train", *common, "--split-from", tmp_path, "--out", tmp_path / "c"),
                          "no split manifest")
    assert_one_line_error(invoke("evaluate", trained, "--prototypes", "--data", phantoms), "drop --data")


@pytest.mark.parametrize("command", [
    ("predict", "{run}", "{data}", "--threads", "0"),
    ("predict", "{run}", "{data}", "--batch-size", "0"),
    ("profile", "hybridnet_xr_50", "--img-size", "0"),
    ("profile", "hybridnet_xr_50", "--batch-size", "0"),
    ("profile", "hybridnet_xr_50", "--threads", "0"),
    ("evaluate", "{run}", "--prototypes", "--k-shot", "0"),
    ("evaluate", "{run}", "--prototypes", "--q-query", "0"),
    ("evaluate", "{run}", "--prototypes", "--episodes", "0"),
    ("explain", "{run}", "{data}", "--batch-size", "0"),
    ("explain", "{run}", "--evaluate", "--n", "0"),
    ("data", "synth", "{tmp}/s", "--per-class", "0"),
    ("data", "synth", "{tmp}/s", "--size", "0"),
    ("demo", "--out", "{tmp}/d", "--epochs", "0"),
    ("train", "--data", "{manifest}", "--out", "{tmp}/t", "--img-size", "0"),
    ("train", "--data", "{manifest}", "--out", "{tmp}/t", "--epochs", "0"),
    ("serve", "{tmp}/none.onnx", "--port", "0"),
    ("serve", "{tmp}/none.onnx", "--workers", "0"),
], ids=lambda c: " ".join(c[:1] + c[-2:]))
def test_zero_is_refused_by_every_count_option_naming_the_flag(command, trained, phantoms, tmp_path):
    """One rule for 0 (issue 17): refused like a negative, by flag name, before anything is written."""
    args = [a.format(run=trained, data=phantoms / "Normal", manifest=phantoms / "manifest.csv", tmp=tmp_path)
            for a in command]
    flag = command[-2]
    before = sorted(p.name for p in trained.iterdir())
    assert_one_line_error(invoke(*args), flag)
    assert sorted(p.name for p in trained.iterdir()) == before
    assert not any(tmp_path.iterdir())
