"""Dual-model weight selection + self-KD: selections, EMA, loss, stages, modes, full runs and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from medlite.config import build_config
from medlite.errors import MedliteError
from medlite.losses.distill import distillation_kl
from medlite.models import create_model
from medlite.models.checkpoint import save_weights
from medlite.models.selection import select_indices
from medlite.paradigms.dual_skd import DualSKDTask, ema_update
from medlite.rundir.layout import DUAL_SKD
from medlite.workflows.train import train

TINY = dict(source="synthetic:binary", synthetic_per_class=12, synthetic_size=32, size=32, batch_size=8,
            progress=False)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model("hybridnet_xr_150", num_classes=2), tmp_path_factory.mktemp("t") / "t.safetensors")


def _task(teacher: Path, mode: str = "ema", epochs: int = 4, **kwargs) -> DualSKDTask:
    cfg = build_config(None, model="hybridnet_xr_50", paradigm="dual-skd", teacher=[str(teacher)], skd_mode=mode,
                       epochs=epochs, **kwargs)

    class Data:
        classes = ["a", "b"]

    model = create_model("hybridnet_xr_50", num_classes=2)
    return DualSKDTask.from_config(model, cfg=cfg, data=Data(), out=Path("."), num_classes=2, augment=None,
                                   channels_last=False)


def test_ema_update_formula():
    a, b = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(3.0)
        a.running_mean.fill_(2.0)
        b.running_mean.fill_(-2.0)
        b.num_batches_tracked.fill_(7)
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight, torch.full((3,), 0.9 * 1 + 0.1 * 3))
    torch.testing.assert_close(a.running_mean, torch.full((3,), 0.9 * 2 - 0.1 * 2))
    assert int(a.num_batches_tracked) == 7


@pytest.mark.parametrize(("mode", "a_pair", "b_pair"), [("ema", 0, 1), ("swap", 1, 0), ("mutual", 0, 1)])
def test_students_get_complementary_selections(teacher_file, mode, a_pair, b_pair):
    task = _task(teacher_file, mode)
    teacher = load_file(str(teacher_file))
    name = "stages.3.0.conv.conv_pw.weight"  # 576 -> 192 rows (w = 3), 288 -> 96 columns
    for student, pair in ((task.model, a_pair), (task.auxiliary, b_pair)):
        rows, cols = select_indices(576, 192, pair=pair), select_indices(288, 96, pair=pair)
        np.testing.assert_array_equal(student.state_dict()[name].numpy(), teacher[name][rows][:, cols])
    assert all(p.requires_grad == (mode == "mutual") for p in task.auxiliary.parameters())


def test_ema_only_starts_b_as_a_copy_of_the_single_student_selection(teacher_file):
    task = _task(teacher_file, "ema-only")
    for (k, a), b in zip(task.model.state_dict().items(), task.auxiliary.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert task.selection["B"] == "copy of A"
    stem = load_file(str(teacher_file))["stem.conv.0.weight"]  # 40 -> 16 channels: linspace rule, not the pair's
    np.testing.assert_array_equal(task.model.state_dict()["stem.conv.0.weight"].numpy(), stem[select_indices(40, 16)])


def test_b_starts_with_a_copy_of_a_classifier(teacher_file):
    task = _task(teacher_file)
    for a, b in zip(task.model.get_classifier().parameters(), task.auxiliary.get_classifier().parameters(),
                    strict=True):
        assert torch.equal(a, b)
    assert "A's classifier" in task.selection["B"]


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 1, 32, 32), generator=g, dtype=torch.uint8), torch.tensor([0, 1, 0, 1, 1, 0])


def test_stage1_loss_is_ce_plus_distillation_from_the_detached_auxiliary(teacher_file):
    task = _task(teacher_file, skd_alpha=0.3, skd_temperature=2.0, label_smoothing=0.0)
    task.label_smoothing = 0.0
    images, labels = _batch()
    x = task.prepare_inputs(images, train=False)
    task.model.eval()  # no dropout: the same logits twice
    loss = task.training_loss(x, labels)
    with torch.no_grad():
        z_a, z_b = task.model(x), task.auxiliary.eval()(x)
    expected = 0.7 * F.cross_entropy(z_a, labels) + 0.3 * distillation_kl(z_a, z_b, 2.0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in task.auxiliary.parameters())  # stop-gradient
    assert any(p.grad is not None for p in task.model.parameters())


def test_auxiliary_follows_the_online_student_by_ema(teacher_file):
    task = _task(teacher_file)
    task.momentum = 0.9
    before = {k: v.clone() for k, v in task.auxiliary.state_dict().items()}
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(0.01)
    task.on_train_batch_end(None, None, 0)
    after, online = task.auxiliary.state_dict(), task.model.state_dict()
    name = "stages.2.0.conv.conv_pw.weight"
    torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * online[name])


def test_stage_two_is_plain_ce_at_a_tenth_of_the_rate(teacher_file, monkeypatch):
    task = _task(teacher_file, epochs=10)
    assert task.stage1_epochs == 9  # the last 10 % of the epochs fine-tune A
    total, epochs = 100, 10
    assert task.lr_factor(95, total, epochs) == pytest.approx(0.1)
    assert task.lr_factor(45, total, epochs) > 0.1  # cosine inside stage 1
    monkeypatch.setattr(DualSKDTask, "in_stage1", property(lambda self: False))
    images, labels = _batch()
    x = task.prepare_inputs(images, train=False)
    task.model.eval()
    torch.testing.assert_close(task.training_loss(x, labels), task.cross_entropy(task.model(x), labels))


def test_config_errors_are_one_line():
    with pytest.raises(MedliteError, match="dual-skd needs one --teacher"):
        build_config(None, paradigm="dual-skd")
    with pytest.raises(MedliteError, match="drop --init/--init-select"):
        build_config(None, paradigm="dual-skd", teacher=["t"], init_select="t")
    with pytest.raises(MedliteError, match="--skd-mode .both.: Input should be"):
        build_config(None, paradigm="dual-skd", teacher=["t"], skd_mode="both")
    with pytest.raises(MedliteError, match="skd_alpha must be in"):
        DualSKDTask(create_model("hybridnet_xr_50", num_classes=2), auxiliary=create_model("hybridnet_xr_50",
                    num_classes=2), alpha=1.5, num_classes=2)


def test_finetune_longer_than_the_run_is_refused(teacher_file):
    with pytest.raises(MedliteError, match="--finetune-epochs 4 leaves no stage-1 epoch of --epochs 4"):
        _task(teacher_file, epochs=4, finetune_epochs=4)


def test_run_records_kept_student_and_b_curve_and_resumes(tmp_path, teacher_file):
    class Crash(Exception):
        pass

    import lightning.pytorch as pl

    class CrashAfterFirstEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Crash

    settings = dict(model="hybridnet_xr_50", paradigm="dual-skd", teacher=str(teacher_file), epochs=3,
                    deterministic=True, seed=1, **TINY)
    full = train(out=tmp_path / "full", **settings)
    record = json.loads((tmp_path / "full" / DUAL_SKD).read_text())
    assert record["kept"] in ("A", "B") and record["ema_momentum"] == 0.99  # under 2,000 steps
    assert set(record["val"]) == {"A", "B"} and record["stage1_epochs"] == 2
    card = (tmp_path / "full" / "model_card.md").read_text()
    assert f"kept student {record['kept']}" in card and "complementary weight selection (uniform)" in card
    with (tmp_path / "full" / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"val_auc_a", "val_auc_b", "val_acc_b", "val_auc"} <= set(rows[0])
    assert all(float(r["val_auc"]) == max(float(r["val_auc_a"]), float(r["val_auc_b"])) for r in rows)
    ckpt = torch.load(tmp_path / "full" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("auxiliary.") for k in ckpt)  # B is checkpointed, so --resume restores it

    with pytest.raises(Crash):
        train(out=tmp_path / "cut", callbacks=[CrashAfterFirstEpoch()], **settings)
    resumed = train(out=tmp_path / "cut", resume=True, progress=False)
    a, b = load_file(str(full.run_dir / "model.safetensors")), load_file(str(resumed.run_dir / "model.safetensors"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert json.loads((tmp_path / "cut" / DUAL_SKD).read_text())["kept"] == record["kept"]
