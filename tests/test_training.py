"""End-to-end training on tiny phantom sets: run directory contents, resume determinism, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from medlite import api
from medlite.config import build_config
from medlite.errors import MedliteError
from medlite.workflows.train import train

TINY = dict(source="synthetic", synthetic_per_class=8, synthetic_size=32, size=32, batch_size=8,
            progress=False)
METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "auc_macro_present", "auc_classes",
               "per_class", "confusion_matrix", "ece", "ci95", "n", "calibration", "ood"}


@pytest.fixture(scope="module")
def tiny_run(trained_run):
    return trained_run  # tests/conftest.py: hybridnet_xr_50, 2 epochs, 48 px, 8 phantoms per class


def test_run_directory_holds_everything(tiny_run):
    out, result = tiny_run
    for name in ("config.yaml", "splits.csv", "model.safetensors", "last.ckpt", "history.csv", "metrics.json",
                 "model_card.md", "versions.json", "run.json", "plots/learning_curves.png", "plots/roc_test.png",
                 "plots/confusion_test.png", "plots/reliability_test.png", "ood_gate.safetensors"):
        assert (out / name).is_file(), name
    assert not (out / "best.ckpt").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS  # six classes: no binary thresholds
    assert metrics == result.metrics
    with (out / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"train_loss", "val_auc", "val_acc", "val_loss"} <= set(rows[0])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["model"] == "hybridnet_xr_50" and config["preprocess"]["size"] == 48
    info = json.loads((out / "run.json").read_text())
    assert info["classes"] == ["Covid-19", "Emphysema", "Normal", "Pneumonia-Bacterial", "Pneumonia-Viral",
                               "Tuberculosis"]
    assert "Accuracy" in (out / "model_card.md").read_text()
    assert info["calibration"]["method"] == "temperature" and info["calibration"]["temperature"] > 0
    assert info["ood_gate"]["method"] == "mahalanobis" and info["ood_gate"]["file"] == "ood_gate.safetensors"
    # metrics.json reports calibration on the test split before and after, and the share the gate flags there.
    calibration = metrics["calibration"]
    assert calibration["split"] == "test" and calibration["temperature"] == info["calibration"]["temperature"]
    assert calibration["after"]["ece"] == pytest.approx(metrics["ece"])  # the metrics are the calibrated model's
    assert 0 <= metrics["ood"]["flagged"] <= 1 and metrics["ood"]["threshold"] == info["ood_gate"]["threshold"]


def test_split_manifest_covers_every_image_once(tiny_run):
    out, _ = tiny_run
    with (out / "splits.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert sum(counts.values()) == 48 and min(counts.values()) > 0


def test_evaluate_reproduces_training_metrics(tiny_run, tmp_path):
    out, result = tiny_run
    metrics = api.evaluate(out, out=tmp_path)
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert metrics["auc_macro"] == pytest.approx(result.metrics["auc_macro"])
    assert (tmp_path / "metrics.json").is_file()


def test_refuses_to_overwrite_a_run(tiny_run):
    out, _ = tiny_run
    with pytest.raises(MedliteError, match="already holds a run"):
        train(out=out, model="hybridnet_xr_50", epochs=1, **TINY)


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(MedliteError, match="unknown model 'hybridnet_xr_75'"):
        train(out=tmp_path / "a", model="hybridnet_xr_75", **TINY)
    with pytest.raises(MedliteError, match="epochs"):
        train(out=tmp_path / "b", model="hybridnet_xr_50", epochs=0, **TINY)
    with pytest.raises(MedliteError, match="run directory not found"):
        train(out=tmp_path / "c", resume=True)


class _Interrupt(Exception):
    pass


class _StopAfter(pl.Callback):
    """Simulates a crash at the start of the epoch after ``epochs`` complete ones."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epochs:
            raise _Interrupt


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    settings = dict(model="hybridnet_xr_50", epochs=3, deterministic=True, seed=3, **TINY)
    full = train(out=tmp_path / "full", **settings)
    with pytest.raises(_Interrupt):
        train(out=tmp_path / "cut", callbacks=[_StopAfter(1)], **settings)
    assert (tmp_path / "cut" / "last.ckpt").is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = train(out=tmp_path / "cut", resume=True, progress=False)
    a = load_file(str(full.run_dir / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed.metrics["accuracy"] == full.metrics["accuracy"]
    with (resumed.run_dir / "history.csv").open() as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["0", "1", "2"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resuming_a_finished_run_changes_nothing_unless_more_epochs_are_asked(tmp_path):
    out = tmp_path / "done"
    train(out=out, model="hybridnet_xr_50", epochs=1, **TINY)
    before = _snapshot(out)
    with pytest.raises(MedliteError, match=r"the run is complete \(1 of 1 epochs.*--epochs above 1"):
        train(out=out, resume=True, progress=False)
    assert _snapshot(out) == before  # not even versions.json or the Lightning log
    further = train(out=out, resume=True, epochs=3, progress=False)
    assert further.epochs_run == 3 and (out / "model.safetensors").is_file() and not (out / "best.ckpt").exists()
    with pytest.raises(MedliteError, match=r"complete \(3 of 3 epochs"):
        train(out=out, resume=True, epochs=2, progress=False)


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    # _Interrupt stands for kill -9: no handler runs, so the files written before epoch 0 stay behind.
    out = tmp_path / "killed"
    settings = dict(model="hybridnet_xr_50", epochs=1, **TINY)
    with pytest.raises(_Interrupt):
        train(out=out, callbacks=[_StopAfter(0)], **settings)
    assert (out / "config.yaml").is_file() and not (out / "last.ckpt").exists()
    with pytest.raises(MedliteError, match="stopped before its first checkpoint; run the same command without "
                                           "--resume"):
        train(out=out, resume=True, progress=False)
    with pytest.warns(UserWarning, match="stopped before its first checkpoint; starting it again"):
        result = train(out=out, **settings)
    assert result.epochs_run == 1 and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_gloo(tmp_path):
    result = train(out=tmp_path / "ddp", model="hybridnet_xr_50", epochs=1, devices=2, accelerator="cpu", **TINY)
    assert (result.run_dir / "model.safetensors").is_file()
    assert result.epochs_run == 1
    assert 0.0 <= result.metrics["accuracy"] <= 1.0


def _split_rows(run):
    with (run / "splits.csv").open() as handle:
        return [(r["name"], r["split"], r["in_fraction"]) for r in csv.DictReader(handle)]


def test_every_paradigm_gets_the_same_labelled_fraction(tmp_path):
    from medlite.models import create_model
    from medlite.models.checkpoint import save_weights

    teacher = save_weights(create_model("hybridnet_xr_100", num_classes=6), tmp_path / "teacher.safetensors")
    common = dict(model="hybridnet_xr_50", epochs=1, fraction=0.5, seed=7, limit_train_batches=1, **TINY)
    extra = {"supervised": {}, "simclr": {}, "dual-skd": {"teacher": str(teacher)},
             "protonet": {"k_shot": 1, "q_query": 1, "episodes_per_epoch": 1, "eval_episodes": 2}}
    manifests = {p: _split_rows(train(out=tmp_path / p, paradigm=p, **kw, **common).run_dir) for p, kw in extra.items()}
    first = manifests["supervised"]
    assert sum(f == "1" for _, s, f in first if s == "train") < sum(s == "train" for _, s, _ in first)
    for paradigm, rows in manifests.items():
        assert rows == first, paradigm


def test_split_from_reuses_a_split_and_redraws_the_fraction(tiny_run, tmp_path):
    out, _ = tiny_run
    base = _split_rows(out)
    runs = [train(out=tmp_path / f"s{seed}", model="hybridnet_xr_50", epochs=1, split_from=str(out), fraction=0.5,
                  seed=seed, limit_train_batches=1, **TINY).run_dir for seed in (1, 2)]
    rows = [_split_rows(r) for r in runs]
    for r in rows:
        assert [(n, s) for n, s, _ in r] == [(n, s) for n, s, _ in base]  # the same images in every part
    fractions = [{n for n, s, f in r if f == "1"} for r in rows]
    assert fractions[0] != fractions[1] and all(len(f) == len(fractions[0]) for f in fractions)
    with pytest.raises(MedliteError, match="no split manifest there"):
        train(out=tmp_path / "bad", model="hybridnet_xr_50", epochs=1, split_from=str(tmp_path / "nothing"), **TINY)


def test_relative_paths_are_recorded_absolute(tmp_path, monkeypatch):
    from medlite.data.synthetic import write_phantom_dataset

    write_phantom_dataset(tmp_path / "xrays", classes="binary", per_class=15, size=32)
    monkeypatch.chdir(tmp_path)
    settings = {**TINY, "source": Path("xrays")}  # a pathlib.Path is accepted wherever a path string is
    run = train(out="run", model="hybridnet_xr_50", epochs=1, limit_train_batches=1, **settings).run_dir
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["data"]["source"] == str(tmp_path / "xrays")
    cfg = build_config(None, paradigm="simclr", unlabelled=[Path("xrays")], split_from=Path("run"))
    assert (cfg.data.split_from, cfg.train.unlabelled) == ("run", ["xrays"])
    monkeypatch.chdir(tmp_path / "run")  # the run still evaluates from another working directory
    assert api.evaluate(tmp_path / "run", out=tmp_path / "eval")["n"] > 0
    assert str(run) == "run"


class _CtrlC(pl.Callback):
    """Presses Ctrl-C at the start of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_a_resumable_run_or_leaves_nothing(tmp_path):
    import signal

    settings = dict(model="hybridnet_xr_50", epochs=2, **TINY)
    with pytest.raises(KeyboardInterrupt, match="before its first checkpoint, so nothing was kept"):
        train(out=tmp_path / "early", callbacks=[_CtrlC(0)], **settings)
    assert not (tmp_path / "early").exists()  # the directory can be used again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards
    with pytest.raises(KeyboardInterrupt, match="medlite train --out .*late --resume"):
        train(out=tmp_path / "late", callbacks=[_CtrlC(1)], **settings)
    assert train(out=tmp_path / "late", resume=True, progress=False).epochs_run == 2


def test_model_card_says_how_the_weights_were_chosen(tmp_path, tiny_run):
    out, _ = tiny_run
    assert "the weights are those of the epoch with the best validation macro AUC" in (
        out / "model_card.md").read_text()
    no_val = train(out=tmp_path / "noval", model="hybridnet_xr_50", epochs=1, **{**TINY, "val_frac": 0.0})
    card = (no_val.run_dir / "model_card.md").read_text()
    assert "no validation split, so no early stopping: the weights are the last epoch's" in card
    assert "on validation macro AUC" not in card


def test_outside_a_terminal_each_epoch_is_one_plain_line(tmp_path, capsys):
    import re

    train(out=tmp_path / "log", model="hybridnet_xr_50", epochs=2, **{**TINY, "progress": True})
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    pattern = (r"epoch {}/2  train_loss \d\.\d{{4}}  val_loss \d\.\d{{4}}  val_acc \d\.\d{{3}}  val_auc \d\.\d{{3}}  "
               r"\(\d+ s\)")
    assert len(lines) == 2 and all(re.fullmatch(pattern.format(i + 1), line) for i, line in enumerate(lines)), lines


def test_model_card_says_when_not_to_trust_a_result(tiny_run):
    out, _ = tiny_run
    card = (out / "model_card.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "## When not to trust a result" in card
    assert f"T = {metrics['calibration']['temperature']:.3f}" in card
    assert f"it flags {metrics['ood']['flagged']:.1%} of the test split" in card
