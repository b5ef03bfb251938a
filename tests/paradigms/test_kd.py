"""Knowledge distillation: frozen teachers, logit cache, large teachers into small students, runs + resume."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medlite.cli import app
from medlite.config import build_config
from medlite.errors import MedliteError
from medlite.models import create_model
from medlite.models.checkpoint import save_encoder, save_weights
from medlite.paradigms.kd import TEACHER_CACHE, KDTask, load_teachers
from medlite.workflows.train import train

TINY = dict(
    source="synthetic:binary",
    synthetic_per_class=10,
    synthetic_size=32,
    size=32,
    batch_size=8,
    progress=False,
    early_stopping_patience=0,
)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kd") / "teacher"
    train(out=out, model="hybridnet_xr_100", epochs=1, **TINY)
    return out


@functools.cache
def _zoo(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=2, in_chans=1)


def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 2


class CountCalls:
    def __init__(self, module: torch.nn.Module) -> None:
        self.images = 0
        module.register_forward_hook(self)

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.images += output.shape[0]


@pytest.mark.parametrize("teacher", ["resnet50", "vgg19_bn", "vit_small_patch16"])
@pytest.mark.parametrize("student", ["hybridnet_xr_100", "mobilenetv3_ofa_595"])
def test_large_teachers_distil_into_small_students(teacher: str, student: str) -> None:
    task = KDTask(create_model(student, num_classes=2), teachers=[(_zoo(teacher), 1)], num_classes=2)
    loss = task.training_step(_batch(), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in _zoo(teacher).parameters())
    assert any(p.grad is not None for p in task.model.parameters())


def test_teachers_stay_frozen_in_eval_mode_and_out_of_checkpoints() -> None:
    teacher = create_model("hybridnet_xr_50", num_classes=2).train()
    task = KDTask(create_model("hybridnet_xr_50", num_classes=2), teachers=[(teacher, 1)], num_classes=2)
    task.train()
    assert not teacher.training and task.model.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task.training_step(_batch(), 0).backward()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # no BN statistics update either: eval mode
    assert all(k.startswith("model.") or k == "class_weights" for k in task.state_dict())
    assert not {id(p) for p in task.parameters()} & {id(p) for p in teacher.parameters()}  # never optimised


def test_teacher_logits_cached_per_image_and_persisted(tmp_path: Path) -> None:
    teacher = create_model("hybridnet_xr_50", num_classes=2)
    calls = CountCalls(teacher)
    cache = tmp_path / TEACHER_CACHE
    task = KDTask(
        create_model("hybridnet_xr_50", num_classes=2),
        teachers=[(teacher, 1), (teacher, 1)],
        num_classes=2,
        cache_path=cache,
        cache_signature="t",
    )
    images, targets = _batch(6)
    x = task.prepare_inputs(images, train=False)
    first = task.teacher_logits(x)
    assert first.shape == (2, 6, 2) and calls.images == 12  # two teachers, six images
    torch.testing.assert_close(task.teacher_logits(x[[5, 0]]), first[:, [5, 0]])
    assert calls.images == 12  # served from the cache
    task.on_train_epoch_end()
    reloaded = KDTask(
        create_model("hybridnet_xr_50", num_classes=2),
        teachers=[(teacher, 1)] * 2,
        num_classes=2,
        cache_path=cache,
        cache_signature="t",
    )
    torch.testing.assert_close(reloaded.teacher_logits(x), first)
    assert calls.images == 12
    with pytest.warns(UserWarning, match="other teachers"):
        KDTask(
            create_model("hybridnet_xr_50", num_classes=2),
            teachers=[(teacher, 1)],
            num_classes=2,
            cache_path=cache,
            cache_signature="another",
        )


def test_cache_needs_augmentation_off(tmp_path: Path) -> None:
    from medlite.data.augment import XrayAugmentConfig

    with pytest.raises(MedliteError, match="augmentation off"):
        KDTask(
            _zoo("hybridnet_xr_50"),
            teachers=[(_zoo("hybridnet_xr_50"), 1)],
            num_classes=2,
            augment=XrayAugmentConfig.supervised(),
            cache_path=tmp_path / TEACHER_CACHE,
        )


def test_teacher_from_model_name_and_checkpoint(tmp_path: Path, teacher_run: Path) -> None:
    cfg = build_config(
        None,
        paradigm="kd",
        teacher_model="hybridnet_xr_100",
        teacher_init=str(teacher_run / "model.safetensors"),
        size=32,
    )
    [(model, in_chans, _)] = load_teachers(cfg, ["normal", "pneumonia"])
    reference = create_model("hybridnet_xr_100", num_classes=2)
    from medlite.models.checkpoint import load_weights

    load_weights(reference, teacher_run / "model.safetensors")
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert in_chans == 1 and not model.training
    # A checkpoint without a classifier for the run's classes cannot teach.
    save_encoder(reference, tmp_path / "encoder.safetensors")
    bad = build_config(
        None,
        paradigm="kd",
        teacher_model="hybridnet_xr_100",
        teacher_init=str(tmp_path / "encoder.safetensors"),
    )
    with pytest.raises(MedliteError, match="no hybridnet_xr_100 classifier"):
        load_teachers(bad, ["normal", "pneumonia"])
    save_weights(create_model("hybridnet_xr_100", num_classes=3), tmp_path / "three.safetensors")
    with pytest.raises(MedliteError, match="classifier for 2 classes"):
        load_teachers(
            build_config(
                None,
                paradigm="kd",
                teacher_model="hybridnet_xr_100",
                teacher_init=str(tmp_path / "three.safetensors"),
            ),
            ["normal", "pneumonia"],
        )


class CrashOnce(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_kd_run_averages_teachers_caches_logits_and_resumes(tmp_path: Path, teacher_run: Path) -> None:
    out = tmp_path / "student"
    settings = dict(
        paradigm="kd",
        teacher=[str(teacher_run), str(teacher_run)],
        model="hybridnet_xr_50",
        epochs=2,
        augment="none",
        **TINY,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(out=out, callbacks=[CrashOnce()], **settings)
    with np.load(out / TEACHER_CACHE) as cached:
        first_keys = cached["keys"]
        assert cached["logits"].shape == (len(first_keys), 2, 2)  # (images, teachers, classes)
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(
        k.startswith("model.") or k == "class_weights" for k in ckpt["state_dict"]
    )  # no teacher inside

    result = train(out=out, resume=True, progress=False)
    assert result.epochs_run == 2 and (out / "model.safetensors").is_file()
    with (out / "splits.csv").open() as handle:
        n_train = sum(row["split"] == "train" for row in csv.DictReader(handle))
    with np.load(out / TEACHER_CACHE) as cached:
        # The resumed run reloaded the cache and only added images it had not seen (one row per image).
        assert np.array_equal(cached["keys"][: len(first_keys)], first_keys)
        assert len(first_keys) < len(cached["keys"]) <= n_train


def test_kd_argument_errors(teacher_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "--paradigm", "kd", "--data", "synthetic:binary", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "needs --teacher" in result.output
    with pytest.raises(MedliteError, match="missing"):
        load_teachers(
            build_config(None, paradigm="kd", teacher=str(tmp_path / "missing")), ["normal", "pneumonia"]
        )
    with pytest.raises(MedliteError, match="differ"):
        load_teachers(build_config(None, paradigm="kd", teacher=str(teacher_run)), ["a", "b"])
