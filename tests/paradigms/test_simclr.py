"""SimCLR pre-training: projection head, kNN monitor, linear probe, encoder files, simclr-pw with resume."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medlite.metrics.probes import knn_predict, linear_probe
from medlite.models import create_model
from medlite.models.checkpoint import save_encoder, save_weights
from medlite.models.heads import SimCLRProjectionHead
from medlite.paradigms.simclr import SimCLRTask
from medlite.rundir.layout import ENCODER
from medlite.rundir.store import resolve_init
from medlite.workflows.train import train

TINY = dict(
    source="synthetic:binary",
    synthetic_per_class=10,
    synthetic_size=32,
    size=32,
    batch_size=8,
    model="hybridnet_xr_50",
    progress=False,
    early_stopping_patience=0,
)


class CrashOnce(pl.Callback):
    """A simulated crash when one paradigm starts epoch ``epoch`` (the epoch before is in ``last.ckpt``)."""

    def __init__(self, task_type: type, epoch: int) -> None:
        self.task_type, self.epoch, self.train_sizes = task_type, epoch, {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_sizes[type(pl_module).__name__] = len(trainer.train_dataloader.dataset)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, self.task_type) and trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_projection_head_is_two_layers_to_128() -> None:
    head = SimCLRProjectionHead(256)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 256), (256, 128)]
    assert head(torch.randn(3, 256)).shape == (3, 128)


def test_knn_predict_votes_by_similarity() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    probs = knn_predict(bank, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), num_classes=3, k=3)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert probs.argmax(1).tolist() == [0, 1] and probs[:, 2].max() == 0  # no neighbour of class 2


def test_linear_probe_handles_binary_and_absent_classes() -> None:
    model = create_model("hybridnet_xr_50", num_classes=3)
    rng = np.random.default_rng(0)
    d = model.num_features
    features = np.concatenate([rng.normal(-2, 1, (20, d)), rng.normal(2, 1, (20, d))]).astype(np.float32)
    labels = np.repeat([0, 2], 20)  # class 1 has no labelled image
    accuracy = linear_probe(model, features, labels, num_classes=3)
    logits = model.get_classifier()(torch.from_numpy(features))
    assert accuracy == 1.0
    assert (logits.argmax(1).numpy() == labels).all()
    assert (logits[:, 1] < -1e3).all()


def test_encoder_file_and_init_from_run_directory(tmp_path: Path) -> None:
    model = create_model("hybridnet_xr_50", num_classes=2)
    save_encoder(model, tmp_path / ENCODER)
    keys = set(load_file(tmp_path / ENCODER))
    assert keys and not any(k.startswith("classifier.") for k in keys)
    save_weights(model, tmp_path / "model.safetensors")
    assert resolve_init(tmp_path) == str(tmp_path / ENCODER)  # a SimCLR run: its encoder wins
    (tmp_path / ENCODER).unlink()
    assert resolve_init(tmp_path) == str(tmp_path / "model.safetensors")
    fresh = create_model("hybridnet_xr_50", num_classes=5, init=resolve_init(tmp_path))
    assert len(fresh.init_report.loaded) == len(keys)  # everything but the 2-class head


def test_simclr_pw_chains_phases_and_resumes_inside_pretraining(tmp_path: Path) -> None:
    out = tmp_path / "pw"
    crash = CrashOnce(SimCLRTask, epoch=1)
    settings = dict(paradigm="simclr-pw", pretrain_epochs=2, epochs=1, fraction=0.5, **TINY)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(out=out, callbacks=[crash], **settings)
    assert (out / "pretrain" / "last.ckpt").is_file() and not (out / "model.safetensors").exists()

    recorder = CrashOnce(type(None), epoch=-1)  # records what each phase trains on, never crashes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(out=out, resume=True, callbacks=[recorder], progress=False)
    assert result.run_dir == out and 0.0 <= result.metrics["accuracy"] <= 1.0

    # Phase 1 is a complete SimCLR run directory: two epochs with the kNN monitor, encoder, linear probe.
    pre = out / "pretrain"
    for name in (ENCODER, "model.safetensors", "metrics.json", "run.json", "history.csv", "config.yaml"):
        assert (pre / name).is_file(), name
    with (pre / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"val_knn_acc", "val_auc", "train_loss"} <= set(rows[0])
    pre_cfg = yaml.safe_load((pre / "config.yaml").read_text())["train"]
    assert (pre_cfg["paradigm"], pre_cfg["epochs"]) == ("simclr", 2)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["paradigm"] == "simclr-pw"
    # SimCLR trains on every training image (labels ignored), fine-tuning only on the labelled half.
    assert recorder.train_sizes["SimCLRTask"] > recorder.train_sizes["PreWarmedTask"]  # a SupervisedTask
    # Phase 2 started from the SimCLR encoder: all tensors but the classifier came from it.
    messages = [str(w.message) for w in caught]
    assert any(f"{ENCODER}: loaded" in m and "classifier" in m for m in messages), messages
    encoder = load_file(pre / ENCODER)
    initial = create_model("hybridnet_xr_50", num_classes=2)
    assert any(not torch.equal(encoder[k], v) for k, v in initial.state_dict().items() if k in encoder)


def test_cli_exposes_paradigm_options() -> None:
    from typer.testing import CliRunner

    from medlite.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--pretrain-epochs",
        "--temperature",
        "--teacher",
        "--teacher-model",
        "--teacher-init",
        "--kd-alpha",
        "--kd-temperature",
        "--target",
        "--coral-weight",
        "--unlabelled",
    ):
        assert option in result.output, option


class TrainSize(pl.Callback):
    """Records how many images each task's training loader holds."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sizes[type(pl_module).__name__] = len(trainer.train_dataloader.dataset)


def test_unlabelled_sources_join_simclr_pretraining_only(tmp_path: Path) -> None:
    from data.test_unlabelled import write_images

    write_images(tmp_path / "extra", 9, size=48)
    recorder = TrainSize()
    out = tmp_path / "pw"
    train(out=out, paradigm="simclr-pw", epochs=1, pretrain_epochs=1, unlabelled=[str(tmp_path / "extra")],
          fraction=0.5, callbacks=[recorder], **TINY)
    with (out / "splits.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    n_train = sum(r["split"] == "train" for r in rows)
    n_labelled = sum(r["split"] == "train" and r["in_fraction"] == "1" for r in rows)
    # SimCLR: every training image of the source plus the 9 unlabelled ones; fine-tuning: the labelled ones.
    assert recorder.sizes == {"SimCLRTask": n_train + 9, "PreWarmedTask": n_labelled}
    assert yaml.safe_load((out / "pretrain" / "config.yaml").read_text())["train"]["unlabelled"] == [
        str(tmp_path / "extra")
    ]
    assert f"also used the images of `{tmp_path / 'extra'}`" in (out / "model_card.md").read_text()


def test_unlabelled_is_refused_outside_simclr(tmp_path: Path) -> None:
    from medlite.errors import MedliteError

    with pytest.raises(MedliteError, match="--unlabelled .*paradigm kd"):
        train(out=tmp_path / "kd", paradigm="kd", teacher=[str(tmp_path)], unlabelled=[str(tmp_path)], **TINY)
    assert not (tmp_path / "kd").exists()
