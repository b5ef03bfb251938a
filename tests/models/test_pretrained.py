"""``init="imagenet"``: the published-weights table, a verified download served from 127.0.0.1, and the reference
heads (torchvision's SqueezeNet 1.1 classifier, timm's class-token ViT head) rebuilt here from their source."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import re
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from medlite.errors import ModelError
from medlite.models import create_model, get_model_cfg, list_models
from medlite.models import pretrained as pt
from medlite.models.heads import set_classifier


class _Server:
    """Files served by name, every request path seen, names whose Content-Length overstates the body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.truncated: set[str] = set()
        self.url = ""


@pytest.fixture
def server(tmp_path, monkeypatch):
    state = _Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            state.requests.append(self.path)
            name = self.path.lstrip("/")
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + (1000 if name in state.truncated else 0)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("MEDLITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(pt.WEIGHTS_URL_ENV, state.url)
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _publish(monkeypatch, server: _Server, name: str, body: bytes, *, full: bool = False) -> pt.PretrainedWeights:
    """Serve ``body`` as ``name``'s ImageNet weights: the table entry is pointed at its hash (a generated file
    cannot match the real one), named as torchvision names files (``<arch>-<sha256[:8]>.pth``)."""
    digest = hashlib.sha256(body).hexdigest()
    entry = pt.pretrained_weights(name)
    if full:
        entry = dataclasses.replace(entry, sha256=digest)
    else:
        entry = dataclasses.replace(entry, url=f"https://download.pytorch.org/models/{name}-{digest[:8]}.pth",
                                    sha256=digest[:8])
    monkeypatch.setitem(pt._TABLE, name, entry)
    server.files[entry.filename] = body
    return entry


def _torch_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _squeezenet_checkpoint() -> dict[str, torch.Tensor]:
    """A 1000-class RGB SqueezeNet 1.1 state dict in torchvision's names, with a classifier whose logits go negative
    (so torchvision's ReLU matters)."""
    torch.manual_seed(0)
    state = create_model("squeezenet1_1", num_classes=1000, in_chans=3).state_dict()
    state["classifier.1.weight"] = torch.randn_like(state["classifier.1.weight"]) * 0.05
    state["classifier.1.bias"] = torch.randn_like(state["classifier.1.bias"])
    return state


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------


def test_every_model_has_published_weights_or_says_why_not():
    published = set(pt.list_pretrained())
    assert published == {"mobilenet_v2", "squeezenet1_1", "resnet18", "resnet50", "vgg19_bn", "efficientnet_lite0",
                         "vit_tiny_patch16", "vit_small_patch16"}
    for name in list_models():
        if name in published:
            entry = pt.pretrained_weights(name)
            assert entry.source == get_model_cfg(name).layout  # the parameter names are that library's
            if entry.hash_check == "prefix":
                # torch.hub's check_hash rule: the hex digits after the last '-' of the file name.
                assert re.search(r"-([a-f0-9]*)\.", entry.filename).group(1) == entry.sha256
            else:
                assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
                assert entry.url == f"https://huggingface.co/timm/{entry.ref}/resolve/main/model.safetensors"
        else:
            with pytest.raises(ModelError) as err:
                create_model(name, init="imagenet")
            _assert_one_line(err, f"no ImageNet weights are published for {name}", "resnet18")


def test_reference_options_are_the_imagenet_default_and_kwargs_override_them(server, monkeypatch):
    assert pt.reference_kwargs("squeezenet1_1", 1000) == {"head_relu": True}
    assert pt.reference_kwargs("squeezenet1_1", 1) == {}  # a ReLU'd single logit never drops below p = 0.5
    assert pt.reference_kwargs("vit_small_patch16", 2) == {"global_pool": "token"}
    assert pt.reference_kwargs("resnet18", 2) == {}
    with pytest.raises(ModelError, match="head_relu=True with num_classes=1"):
        create_model("squeezenet1_1", num_classes=1, head_relu=True)
    _publish(monkeypatch, server, "squeezenet1_1", _torch_bytes(_squeezenet_checkpoint()))
    assert create_model("squeezenet1_1", num_classes=3, init="imagenet").arch_kwargs() == {"head_relu": True}
    assert not create_model("squeezenet1_1", num_classes=3, init="imagenet", head_relu=False).head_relu
    assert not create_model("squeezenet1_1", num_classes=3).head_relu  # random init keeps today's head


# ---------------------------------------------------------------------------------------------------------------
# Download, cache, failures
# ---------------------------------------------------------------------------------------------------------------


def test_downloads_once_verifies_caches_and_loads(server, monkeypatch, tmp_path, capsys):
    state = _squeezenet_checkpoint()
    entry = _publish(monkeypatch, server, "squeezenet1_1", _torch_bytes(state))
    model = create_model("squeezenet1_1", num_classes=1000, in_chans=3, init="imagenet")
    cached = tmp_path / "cache" / "weights" / entry.filename
    assert server.requests == [f"/{entry.filename}"]
    assert cached.is_file() and sorted(p.name for p in cached.parent.iterdir()) == [entry.filename]
    assert "downloading squeezenet1_1 ImageNet weights" in capsys.readouterr().err
    assert model.init_report.path == str(cached) and not model.init_report.skipped
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    grey = create_model("squeezenet1_1", num_classes=2, init="imagenet")  # cache hit: no second request
    assert len(server.requests) == 1
    assert [name for name, _ in grey.init_report.adapted] == ["features.0.weight"]  # RGB stem summed to grey
    torch.testing.assert_close(grey.features[0].weight, state["features.0.weight"].sum(1, keepdim=True))
    assert any("classifier" in key for key, _ in grey.init_report.skipped)  # 1000-way head re-initialised


def test_hash_mismatch_fails_in_one_line_and_keeps_nothing(server, monkeypatch, tmp_path):
    entry = _publish(monkeypatch, server, "squeezenet1_1", _torch_bytes(_squeezenet_checkpoint()))
    server.files[entry.filename] = b"not the published file" * 100
    with pytest.raises(ModelError) as err:
        create_model("squeezenet1_1", init="imagenet")
    dest = tmp_path / "cache" / "weights" / entry.filename
    _assert_one_line(err, "SHA-256", f"not the published prefix {entry.sha256}", f"{server.url}/{entry.filename}",
                     str(dest), "--init FILE")
    assert list(dest.parent.iterdir()) == []  # neither the file nor a partial download


def test_truncated_download_and_http_errors_keep_nothing(server, monkeypatch, tmp_path):
    entry = _publish(monkeypatch, server, "squeezenet1_1", _torch_bytes(_squeezenet_checkpoint()))
    server.truncated.add(entry.filename)
    with pytest.raises(ModelError) as err:
        create_model("squeezenet1_1", init="imagenet")
    _assert_one_line(err, "cannot download squeezenet1_1", str(tmp_path / "cache" / "weights" / entry.filename))
    del server.files[entry.filename]
    with pytest.raises(ModelError) as err:
        create_model("squeezenet1_1", init="imagenet")
    _assert_one_line(err, "HTTP 404", f"{server.url}/{entry.filename}")
    assert list((tmp_path / "cache" / "weights").iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_names_the_url_and_the_path_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDLITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(pt.WEIGHTS_URL_ENV, f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ModelError) as err:
        create_model("resnet18", init="imagenet")
    dest = tmp_path / "cache" / "weights" / "resnet18-f37072fd.pth"
    _assert_one_line(err, "cannot download resnet18's ImageNet weights", "resnet18-f37072fd.pth", "refused",
                     f"save it as {dest}", "--init FILE")
    assert not dest.exists()
    # Without the override the hint is the published URL.
    assert pt.download_url(pt.pretrained_weights("resnet18"), base_url="") == \
        "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def test_stalled_server_times_out(monkeypatch, tmp_path):
    # A listening socket that never answers: the connection is queued by the kernel, no byte ever arrives.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        with pytest.raises(ModelError) as err:
            pt.imagenet_checkpoint("resnet18", cache_dir=tmp_path, timeout=0.3,
                                   base_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
    _assert_one_line(err, "no data for 0.3 s", str(tmp_path / "resnet18-f37072fd.pth"))
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_file_in_the_cache_is_refused(server, tmp_path):
    dest = tmp_path / "cache" / "weights" / "resnet18-f37072fd.pth"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"some other checkpoint")
    with pytest.raises(ModelError) as err:
        create_model("resnet18", init="imagenet")
    _assert_one_line(err, str(dest), "is not that of resnet18's ImageNet weights", "delete it")
    assert server.requests == []


# ---------------------------------------------------------------------------------------------------------------
# Reference heads, rebuilt from the published source
# ---------------------------------------------------------------------------------------------------------------


class _TorchvisionFire(nn.Module):
    # torchvision/models/squeezenet.py: Fire
    def __init__(self, inplanes: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class _TorchvisionSqueezeNet11(nn.Module):
    # torchvision/models/squeezenet.py: SqueezeNet(version="1_1"), forward = flatten(classifier(features(x)))
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), pool(),
            _TorchvisionFire(64, 16, 64, 64), _TorchvisionFire(128, 16, 64, 64), pool(),
            _TorchvisionFire(128, 32, 128, 128), _TorchvisionFire(256, 32, 128, 128), pool(),
            _TorchvisionFire(256, 48, 192, 192), _TorchvisionFire(384, 48, 192, 192),
            _TorchvisionFire(384, 64, 256, 256), _TorchvisionFire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(512, num_classes, kernel_size=1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def test_squeezenet_imagenet_logits_equal_torchvision(server, monkeypatch, tmp_path):
    state = _squeezenet_checkpoint()
    _publish(monkeypatch, server, "squeezenet1_1", _torch_bytes(state))
    reference = _TorchvisionSqueezeNet11().eval()
    reference.load_state_dict(state)  # strict: medlite's names are torchvision's
    model = create_model("squeezenet1_1", num_classes=1000, in_chans=3, init="imagenet").eval()
    torch.save(state, tmp_path / "same.pth")
    old_default = create_model("squeezenet1_1", num_classes=1000, in_chans=3, init=tmp_path / "same.pth").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
        assert (old_default(x) - expected).abs().max() > 1e-2  # without the ReLU the logits differ


class _TimmTokenHead(nn.Module):
    # timm/models/vision_transformer.py, global_pool="token": forward_features ends with self.norm(x);
    # forward_head pools x[:, 0] (num_prefix_tokens = 1), fc_norm is Identity for token pooling, then self.head.
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(tokens)[:, 0])


def test_vit_imagenet_logits_equal_timm_class_token_head(server, monkeypatch, tmp_path):
    torch.manual_seed(1)
    source = create_model("vit_tiny_patch16", num_classes=1000, in_chans=3)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    state["norm.weight"] = 1 + torch.randn(192) * 0.5
    state["head.weight"] = torch.randn(1000, 192) * 0.1
    buffer = tmp_path / "vit.safetensors"
    save_file(state, str(buffer))
    _publish(monkeypatch, server, "vit_tiny_patch16", buffer.read_bytes(), full=True)  # a Hugging Face file
    model = create_model("vit_tiny_patch16", num_classes=1000, in_chans=3, init="imagenet").eval()
    assert model.global_pool == "token" and model.cfg.cam_layer == "blocks.11.norm1"
    old_default = create_model("vit_tiny_patch16", num_classes=1000, in_chans=3, init=buffer).eval()
    reference = _TimmTokenHead(192, 1000).eval()
    reference.load_state_dict({k: state[k] for k in ("norm.weight", "norm.bias", "head.weight", "head.bias")})
    tokens: list[torch.Tensor] = []
    model.blocks.register_forward_hook(lambda m, i, o: tokens.append(o))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(x)
        expected = reference(tokens[0])
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
        assert (old_default(x) - expected).abs().max() > 1e-2  # mean-pooled patch tokens are another head
        features = model.forward_features(x)
        assert features.shape == (2, 192, 1, 1)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), reference.norm(tokens[0])[:, 0])


def test_class_token_vit_gradcam_uses_the_last_block_tokens():
    from medlite.explain import GradCAM

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16", num_classes=2, global_pool="token").eval()
    x = torch.randn(1, 1, 64, 64)
    with GradCAM(model) as cam:  # model.cfg.cam_layer = blocks.11.norm1, whose patch tokens reach the class token
        maps = cam(x, target=1).maps
    assert maps.shape == (1, 64, 64) and maps.max() == 1 and maps.std() > 0.05


def test_fitting_a_linear_classifier_turns_the_squeezenet_relu_off():
    model = create_model("squeezenet1_1", num_classes=3, head_relu=True).eval()
    weight, bias = torch.randn(3, 512), torch.randn(3)
    with pytest.warns(UserWarning, match="head_relu=False"):
        set_classifier(model, weight, bias)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), pooled @ weight.T + bias)
    assert model.arch_kwargs() == {"head_relu": False}


# ---------------------------------------------------------------------------------------------------------------
# Training from ImageNet weights and rebuilding the run
# ---------------------------------------------------------------------------------------------------------------


def test_cli_train_init_imagenet_records_the_reference_head(server, monkeypatch, tmp_path):
    from medlite.cli import app
    from medlite.data.synthetic import write_phantom_dataset
    from medlite.rundir.store import load_run_model

    _publish(monkeypatch, server, "squeezenet1_1", _torch_bytes(_squeezenet_checkpoint()))
    data = write_phantom_dataset(tmp_path / "xrays", classes="pediatric3", per_class=6, size=32)
    run = tmp_path / "run"

    def args(out: Path) -> list[str]:
        return ["train", "--data", str(data / "manifest.csv"), "--model", "squeezenet1_1", "--init", "imagenet",
                "--out", str(out), "--epochs", "1", "--img-size", "32", "--batch-size", "4", "--val-frac", "0.2",
                "--test-frac", "0.3"]

    result = CliRunner().invoke(app, args(run), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 1
    assert "init: imagenet" in (run / "config.yaml").read_text()
    info = json.loads((run / "run.json").read_text())
    assert info["model_kwargs"] == {"head_relu": True}
    model, _, _ = load_run_model(run)
    assert model.head_relu
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        trained = model(x)
        # A run directory written before "model_kwargs" existed rebuilds every family's defaults.
        info.pop("model_kwargs")
        (run / "run.json").write_text(json.dumps(info))
        old, _, _ = load_run_model(run)
        assert not old.head_relu and not torch.allclose(old(x), trained)
    offline = CliRunner().invoke(app, args(tmp_path / "offline"), catch_exceptions=False,
                                 env={pt.WEIGHTS_URL_ENV: f"http://127.0.0.1:{_closed_port()}",
                                      "MEDLITE_CACHE": str(tmp_path / "empty")})
    assert offline.exit_code == 2, offline.output
    text = (offline.stderr if offline.stderr else offline.output).strip()
    assert text.startswith("error:") and "\n" not in text and "--init FILE" in text, text


def test_old_run_without_model_kwargs_gives_identical_outputs(tmp_path):
    from medlite.rundir.store import load_run_model
    from medlite.workflows.train import train

    run = train(out=tmp_path / "vit", model="vit_tiny_patch16", epochs=1, source="synthetic",
                synthetic_per_class=8, synthetic_size=32, size=32, batch_size=8, limit_train_batches=1,
                progress=False).run_dir
    info = json.loads((Path(run) / "run.json").read_text())
    assert info["model_kwargs"] == {"global_pool": "avg"} and info["cam_layer"] == "to_grid"
    new, _, _ = load_run_model(run)
    info.pop("model_kwargs")
    (Path(run) / "run.json").write_text(json.dumps(info))
    old, _, _ = load_run_model(run)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(old(x), new(x), rtol=0, atol=0)
