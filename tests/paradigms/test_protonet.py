"""Prototypical networks: episodic training, the folded prototype classifier, episodic CIs, the CE baseline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medlite.config import build_config, load_config
from medlite.data.prepared import prepare_data
from medlite.errors import MedliteError
from medlite.losses.prototypical import class_prototypes, prototype_logits
from medlite.metrics.probes import episodic_accuracy, fit_prototype_classifier
from medlite.models import create_model
from medlite.models.heads import EmbeddingHead, pooled_features
from medlite.models.inputs import normalise_batch
from medlite.paradigms.protonet import ProtoNetTask
from medlite.rundir.layout import EMBEDDING
from medlite.rundir.store import load_run_model
from medlite.workflows.evaluate import evaluate_with_prototypes
from medlite.workflows.train import train

REPO = Path(__file__).resolve().parents[2]
TINY = dict(source="synthetic:pediatric3", synthetic_per_class=14, synthetic_size=32, size=32, progress=False,
            early_stopping_patience=0)
PROTO = dict(paradigm="protonet", k_shot=2, q_query=2, episodes_per_epoch=3, eval_episodes=25)


@pytest.fixture(scope="module")
def proto_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto") / "run"
    train(out=out, model="hybridnet_xr_50", epochs=2, val_frac=0.25, test_frac=0.25, **PROTO, **TINY)
    return out


def _prepare(model, batch):
    return normalise_batch(batch.float() / 255.0, model.cfg.mean, model.cfg.std, 1)


def test_run_directory_and_episodic_report(proto_run: Path):
    for name in ("model.safetensors", EMBEDDING, "episodic.json", "metrics.json", "history.csv", "splits.csv"):
        assert (proto_run / name).is_file(), name
    episodic = json.loads((proto_run / "episodic.json").read_text())
    assert episodic["episodes"] == 25 and episodic["n_way"] == 3 and episodic["k_shot"] == 2
    lo, hi = episodic["ci95"]
    assert lo <= episodic["accuracy"] <= hi and 0 <= lo and hi <= 1.0 + 1e-9
    assert hi - lo == pytest.approx(2 * 1.96 * episodic["sd"] / np.sqrt(25))
    with (proto_run / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"train_loss", "train_episode_acc", "val_acc", "val_auc", "val_episode_acc"} <= set(rows[0])


def test_folded_classifier_gives_exactly_the_protonet_probabilities(proto_run: Path):
    model, cfg, _ = load_run_model(proto_run)
    head = EmbeddingHead(model.num_features, 128)
    head.load_state_dict({k: v for k, v in load_file(str(proto_run / EMBEDDING)).items()})
    data = prepare_data(cfg, manifest=proto_run / "splits.csv", progress=False)
    train_idx, test_idx = data.indices("train"), data.indices("test", labelled_only=False)
    with torch.no_grad():
        def embed(idx):
            x = _prepare(model, torch.from_numpy(np.ascontiguousarray(data.cached.images[idx]))[:, None])
            return head(pooled_features(model, x)), model(x)

        bank, _ = embed(train_idx)
        query, logits = embed(test_idx)
    protos = class_prototypes(bank, torch.from_numpy(data.cached.labels[train_idx]), 3)
    expected = prototype_logits(query, protos).softmax(1)
    torch.testing.assert_close(logits.softmax(1), expected, atol=1e-4, rtol=1e-4)
    metrics = json.loads((proto_run / "metrics.json").read_text())
    accuracy = float((expected.argmax(1).numpy() == data.cached.labels[test_idx]).mean())
    assert metrics["accuracy"] == pytest.approx(accuracy)


def test_training_on_a_fixed_episode_lowers_the_loss():
    torch.manual_seed(0)
    model = create_model("hybridnet_xr_50", num_classes=2, in_chans=1)
    task = ProtoNetTask(model, k_shot=3, q_query=3, augment=None, num_classes=2, channels_last=False)
    images = torch.zeros(12, 1, 32, 32, dtype=torch.uint8)
    images[[0, 1, 2, 6, 7, 8], :, :16] = 200  # class 0: bright top half
    images[[3, 4, 5, 9, 10, 11], :, 16:] = 200  # class 1: bright bottom half
    images += torch.randint(0, 40, images.shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    task.log = lambda *a, **k: None  # outside a Trainer
    losses = []
    for _ in range(15):
        loss = task.training_step((images, labels), 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_episodic_accuracy_on_separable_features_and_its_ci():
    labels = np.repeat([0, 1, 2], 20)
    features = torch.from_numpy(np.eye(3)[labels] * 10 + np.random.default_rng(0).normal(size=(60, 3)) * 0.1)
    result = episodic_accuracy(features.float(), labels, k_shot=5, q_query=5, episodes=50, seed=1)
    assert result["accuracy"] == 1.0 and result["ci95"] == [1.0, 1.0]
    noisy = torch.from_numpy(np.random.default_rng(2).normal(size=(60, 3))).float()
    chance = episodic_accuracy(noisy, labels, k_shot=5, q_query=5, episodes=200, seed=1)
    assert 0.2 < chance["accuracy"] < 0.5 and chance["ci95"][1] - chance["ci95"][0] > 0
    assert episodic_accuracy(noisy, labels, episodes=20, seed=3) == episodic_accuracy(noisy, labels, episodes=20,
                                                                                        seed=3)


def test_episodes_report_the_queries_used_not_the_ones_asked(tmp_path: Path):
    from medlite.paradigms.protonet import episodic_note

    labels = np.repeat([0, 1, 2], [20, 7, 3])
    features = torch.randn(30, 4)
    with pytest.warns(UserWarning, match=r"too few images for 5 queries per class after 2 support images; used 1-5"):
        result = episodic_accuracy(features, labels, k_shot=2, q_query=5, episodes=10, seed=0)
    assert (result["q_query"], result["q_query_requested"], result["queries_per_class"]) == (5, 5, [5, 5, 1])
    (tmp_path / "episodic.json").write_text(json.dumps({**result, "split": "test"}))
    assert "(3-way 2-shot, 1-5 queries per class of 5 asked)" in episodic_note(tmp_path / "episodic.json")[0]
    full = episodic_accuracy(features, labels, k_shot=1, q_query=2, episodes=10, seed=0)
    (tmp_path / "episodic.json").write_text(json.dumps({**full, "split": "test"}))
    assert "(3-way 1-shot, 2 queries)" in episodic_note(tmp_path / "episodic.json")[0]


def test_prototype_classifier_on_pooled_features():
    torch.manual_seed(0)
    model = create_model("hybridnet_xr_50", num_classes=2, in_chans=1).eval()
    x = torch.randn(10, 1, 32, 32)
    with torch.no_grad():
        feats = pooled_features(model, x)
    labels = np.array([0, 1] * 5)
    protos = fit_prototype_classifier(model, feats, labels, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x).softmax(1), prototype_logits(feats, protos).softmax(1), atol=1e-5,
                                   rtol=1e-4)


def test_ce_encoder_plus_prototypes_baseline(tmp_path: Path):
    run = tmp_path / "ce"
    train(out=run, model="hybridnet_xr_50", epochs=1, batch_size=8, val_frac=0.25, test_frac=0.25, **TINY)
    result = evaluate_with_prototypes(run, k_shot=2, q_query=2, episodes=30)
    out = run / "eval-prototypes"
    assert (out / "metrics.json").is_file() and (out / "episodic.json").is_file()
    assert result["episodic"]["episodes"] == 30 and 0 <= result["metrics"]["accuracy"] <= 1
    # the run's own weights are untouched: evaluate_run still reads the CE classifier
    model, _, _ = load_run_model(run)
    assert not torch.equal(model.get_classifier().weight, torch.zeros_like(model.get_classifier().weight))


def test_comparative_seed_config_reproduces_its_settings(tmp_path: Path):
    cfg = load_config(REPO / "configs" / "protonet-comparative.yaml")
    t = cfg.train
    assert (t.paradigm, t.n_way, t.k_shot, t.q_query) == ("protonet", 3, 5, 5)
    assert (t.episodes_per_epoch, t.eval_episodes) == (20, 20)
    assert (t.optimizer, t.lr, t.schedule, t.lr_step_epochs, t.lr_step_gamma) == ("adam", 1e-3, "step", 10, 0.5)
    assert t.embedding_dim == 128
    # and it runs (shortened) on phantoms with the same three classes
    result = train(cfg, out=tmp_path / "seed", epochs=1, episodes_per_epoch=2, eval_episodes=5, k_shot=2,
                   q_query=2, val_frac=0.25, test_frac=0.25, **TINY)
    assert (result.run_dir / "episodic.json").is_file()


def test_step_schedule_halves_every_ten_epochs():
    model = create_model("hybridnet_xr_50", num_classes=2)
    task = ProtoNetTask(model, num_classes=2, schedule="step", lr_step_epochs=10, lr_step_gamma=0.5, warmup_epochs=0)
    per_epoch, epochs = 20, 30
    factors = [task.lr_factor(e * per_epoch, per_epoch * epochs, epochs) for e in (0, 9, 10, 19, 20, 29)]
    assert factors == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_protonet_settings_are_validated():
    with pytest.raises(MedliteError, match="protonet trains one episode per step in one process"):
        build_config(None, paradigm="protonet", devices=2)
    with pytest.raises(MedliteError, match="--k-shot 0: Input should be greater than or equal to 1"):
        build_config(None, paradigm="protonet", k_shot=0)


def test_the_validation_bank_keeps_every_class():
    from medlite.paradigms.protonet import stratified_subset

    labels = np.repeat([0, 1, 2], [19990, 4, 6])
    idx = np.arange(len(labels)) + 100
    bank = stratified_subset(idx, labels, 2048, seed=0)
    kept = labels[bank - 100]
    assert set(np.unique(kept)) == {0, 1, 2} and abs(len(bank) - 2048) <= 3
    assert len(set(bank.tolist())) == len(bank) and np.all(np.diff(bank) > 0)
    np.testing.assert_array_equal(stratified_subset(idx[:50], labels[:50], 2048, 0), idx[:50])


def test_fold_refuses_a_non_linear_head_and_takes_a_bias_free_one():
    model = create_model("hybridnet_xr_50", num_classes=2).eval()
    feats, labels = torch.randn(6, 8), np.array([0, 1] * 3)
    with pytest.raises(MedliteError, match="embedding head must be linear, not Sequential"):
        fit_prototype_classifier(model, feats, labels, 2, head=torch.nn.Sequential(torch.nn.Linear(4, 8)))
    head = torch.nn.Linear(model.num_features, 8, bias=False)
    fit_prototype_classifier(model, feats, labels, 2, head=head)
    h = torch.randn(3, model.num_features)
    protos = class_prototypes(feats, torch.from_numpy(labels), 2)
    torch.testing.assert_close(model.get_classifier()(h).softmax(1), prototype_logits(head(h), protos).softmax(1),
                               atol=1e-5, rtol=1e-4)
