"""The official ImageNet-1k checkpoints of medlite's architectures: where they are published, and a verified download.

``create_model(name, init="imagenet")`` calls :func:`imagenet_checkpoint`, which returns the cached file or
downloads it once, then loads it like ``init=FILE`` (:func:`medlite.models.checkpoint.load_checkpoint`: a 3-channel stem
is summed to ``in_chans``, a head of another class count is re-initialised). Only the architectures whose parameter
names equal a torchvision or timm model have an entry; each entry is the file that library itself downloads for
its default (torchvision ``DEFAULT``, timm's first pretrained tag) ImageNet weights.

Integrity: torchvision (and timm's GitHub releases) name each file ``<arch>-<first 8 hex digits of its
SHA-256>.pth`` and ``torch.hub`` checks that prefix (``check_hash``); medlite checks the same prefix. timm's
Hugging Face files carry no hash in their name, so their full SHA-256 is pinned here. The hash is checked after
every download and again each time a cached (or hand-placed) file is used.

Files live in ``$MEDLITE_CACHE/weights`` (default ``~/.cache/medlite/weights``, the root of the image cache).
``$MEDLITE_WEIGHTS_URL`` (or ``base_url=``) replaces the published location by ``BASE/<file name>``, for a mirror
or a local test server. A failed download, an HTTP error or a hash mismatch raises one ``ModelError`` line naming
the URL to fetch by hand and the exact path to put the file at; nothing partial is left behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from medlite.data.cache import default_cache_dir
from medlite.errors import ModelError
from medlite.models.registry import get_model_cfg
from medlite.utils.atomic import temp_beside

WEIGHTS_URL_ENV = "MEDLITE_WEIGHTS_URL"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PretrainedWeights:
    """One published ImageNet-1k checkpoint.

    Attributes:
        model: medlite's registered name.
        source: ``"torchvision"`` or ``"timm"``.
        ref: the source's own name for these weights (torchvision enum member or timm ``arch.tag``).
        url: the published file.
        sha256: lower-case hex the file's SHA-256 must start with: all 64 digits, or the 8-digit prefix the
            published file name carries (``torch.hub``'s ``check_hash`` rule).
        reference: constructor options that make medlite's forward pass equal the source's (the reference head);
            ``create_model(..., init="imagenet")`` uses them unless told otherwise.
    """

    model: str
    source: str
    ref: str
    url: str
    sha256: str
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        """Cache file name: the URL's own (``squeezenet1_1-b8a52dc0.pth``), or ``<ref>.safetensors`` for a Hugging
        Face ``model.safetensors``."""
        name = Path(urlparse(self.url).path).name
        return f"{self.ref}.safetensors" if name == "model.safetensors" else name

    @property
    def hash_check(self) -> str:
        """``"full"`` or ``"prefix"``: how much of the SHA-256 is pinned."""
        return "full" if len(self.sha256) == 64 else "prefix"

    def matches(self, digest: str) -> bool:
        """Whether a full hex SHA-256 ``digest`` is this file's."""
        return digest.lower().startswith(self.sha256)


_TV = "https://download.pytorch.org/models/"
_HF = "https://huggingface.co/timm/{ref}/resolve/main/model.safetensors"
_TOKEN = {"global_pool": "token"}

# torchvision URLs and enum names as in torchvision/models/{mobilenetv2,squeezenet,resnet,vgg}.py (``DEFAULT``);
# timm's as in timm/models/{efficientnet,vision_transformer}.py (efficientnet_lite0's pretrained cfg still names
# its GitHub release file) and the timm Hugging Face repositories.
_TABLE: dict[str, PretrainedWeights] = {
    w.model: w
    for w in (
        PretrainedWeights("mobilenet_v2", "torchvision", "MobileNet_V2_Weights.IMAGENET1K_V2",
                          _TV + "mobilenet_v2-7ebf99e0.pth", "7ebf99e0"),
        PretrainedWeights("squeezenet1_1", "torchvision", "SqueezeNet1_1_Weights.IMAGENET1K_V1",
                          _TV + "squeezenet1_1-b8a52dc0.pth", "b8a52dc0", {"head_relu": True}),
        PretrainedWeights("resnet18", "torchvision", "ResNet18_Weights.IMAGENET1K_V1",
                          _TV + "resnet18-f37072fd.pth", "f37072fd"),
        PretrainedWeights("resnet50", "torchvision", "ResNet50_Weights.IMAGENET1K_V2",
                          _TV + "resnet50-11ad3fa6.pth", "11ad3fa6"),
        PretrainedWeights("vgg19_bn", "torchvision", "VGG19_BN_Weights.IMAGENET1K_V1",
                          _TV + "vgg19_bn-c79401a0.pth", "c79401a0"),
        PretrainedWeights("efficientnet_lite0", "timm", "efficientnet_lite0.ra_in1k",
                          "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
                          "efficientnet_lite0_ra-37913777.pth", "37913777"),
        PretrainedWeights("vit_tiny_patch16", "timm", "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                          _HF.format(ref="vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
                          "fecf81b492bd13ee7a5297cb74d1d417aac8bf7e1b7d96aed89c4691984587ed", _TOKEN),
        PretrainedWeights("vit_small_patch16", "timm", "vit_small_patch16_224.augreg_in21k_ft_in1k",
                          _HF.format(ref="vit_small_patch16_224.augreg_in21k_ft_in1k"),
                          "79c03c635cdfd798a364a9d8c4e5c0b7255b975ea2c9616046d4f77ab01435aa", _TOKEN),
    )
}

_WHY_NONE = {
    "mobilenet_v2_050": "torchvision publishes MobileNetV2 weights only at width 1.0 and timm's mobilenetv2_050 "
                        "uses timm's parameter names, not the torchvision names this model has",
    "mobilenet_v2_140": "torchvision publishes MobileNetV2 weights only at width 1.0 and timm's mobilenetv2_140 "
                        "uses timm's parameter names, not the torchvision names this model has",
    "mobilenetv3_ofa_595": "it is a Once-for-All subnet that neither torchvision nor timm publishes (a checkpoint "
                           "from the OFA repository can be passed as --init FILE)",
}


def list_pretrained() -> list[str]:
    """Registered names with a published ImageNet checkpoint, sorted."""
    return sorted(_TABLE)


def pretrained_weights(name: str) -> PretrainedWeights:
    """The :class:`PretrainedWeights` of ``name``.

    Raises:
        ModelError: unknown model, or (one line, with the reason) none is published for it.
    """
    cfg = get_model_cfg(name)  # unknown names get the registry's message with close matches
    if name in _TABLE:
        return _TABLE[name]
    why = _WHY_NONE.get(name) or (
        "it is medlite's own architecture" if cfg.layout == "medlite" else "no checkpoint is listed for it")
    raise ModelError(f"init 'imagenet': no ImageNet weights are published for {name}: {why}; models with "
                     f"ImageNet weights: {', '.join(list_pretrained())}")


def reference_kwargs(name: str, num_classes: int) -> dict[str, Any]:
    """Constructor options of the source's head for ``name`` (``{}`` when medlite's head already equals it).

    SqueezeNet's ReLU'd logits are skipped for a single logit (its sigmoid could never fall below 0.5).
    """
    options = dict(pretrained_weights(name).reference)
    if num_classes == 1:
        options.pop("head_relu", None)
    return options


def weights_cache_dir() -> Path:
    """``$MEDLITE_CACHE/weights`` (default ``~/.cache/medlite/weights``)."""
    return default_cache_dir() / "weights"


def download_url(weights: PretrainedWeights, base_url: str | None = None) -> str:
    """The URL fetched for ``weights``: ``BASE/<filename>`` when ``base_url`` or ``$MEDLITE_WEIGHTS_URL`` is set, else
    the published one."""
    base = base_url if base_url is not None else os.environ.get(WEIGHTS_URL_ENV)
    return f"{base.rstrip('/')}/{weights.filename}" if base else weights.url


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_checkpoint(name: str, *, cache_dir: str | Path | None = None, base_url: str | None = None,
                        timeout: float = 60.0) -> Path:
    """The verified ImageNet checkpoint of ``name``: from the cache, else downloaded into it first.

    Args:
        name: a registered model with published weights (:func:`list_pretrained`).
        cache_dir: folder of the files; default :func:`weights_cache_dir`.
        base_url: fetch ``BASE/<filename>`` instead of the published URL (default ``$MEDLITE_WEIGHTS_URL``).
        timeout: seconds without progress (connect or read) before the download is abandoned.

    Returns:
        Path of the cached file, whose SHA-256 matched the published one.

    Raises:
        ModelError: no published weights; the cache folder cannot be created; the download failed (offline,
            HTTP error, timeout, truncated) or its hash does not match; a cached file's hash does not match.
    """
    weights = pretrained_weights(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else weights_cache_dir()
    dest = root / weights.filename
    url = download_url(weights, base_url)
    if dest.is_file():
        digest = file_sha256(dest)
        if not weights.matches(digest):
            raise ModelError(f"{dest}: SHA-256 {digest[:16]}... is not that of {name}'s ImageNet weights "
                             f"({weights.sha256[:16]}...); delete it to download {url} again, or pass --init FILE")
        return dest
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(f"{root}: cannot create the weights cache ({err.strerror}); set MEDLITE_CACHE to a "
                         f"writable folder, or download {url} yourself and pass --init FILE") from err
    _download(weights, url, dest, timeout)
    return dest


def _download(weights: PretrainedWeights, url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` to a temporary file beside ``dest`` while hashing; rename it into place only if it matches."""
    hint = f"download {url} by hand and save it as {dest} (or pass --init FILE)"
    fd, tmp = temp_beside(dest, suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "medlite"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    expected = response.headers.get("Content-Length")
                    size = f" ({int(expected) / 1e6:.1f} MB)" if expected and expected.isdigit() else ""
                    print(f"medlite: downloading {weights.model} ImageNet weights{size} from {url} to {dest}",
                          file=sys.stderr)
                    received = 0
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        received += len(chunk)
            except urllib.error.HTTPError as err:
                raise ModelError(f"cannot download {weights.model}'s ImageNet weights from {url}: HTTP {err.code} "
                                 f"{err.reason}; {hint}") from err
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
                reason = getattr(err, "reason", None) or err
                if isinstance(reason, TimeoutError):
                    reason = f"no data for {timeout:g} s"
                raise ModelError(f"cannot download {weights.model}'s ImageNet weights from {url} ({reason}); "
                                 f"{hint}") from err
        if expected and expected.isdigit() and received != int(expected):
            raise ModelError(f"cannot download {weights.model}'s ImageNet weights from {url}: the connection "
                             f"closed after {received} of {expected} bytes; {hint}")
        got = digest.hexdigest()
        if not weights.matches(got):
            kind = "" if weights.hash_check == "full" else "prefix "
            raise ModelError(f"{weights.model}'s ImageNet weights from {url} have SHA-256 {got}, not the published "
                             f"{kind}{weights.sha256}; nothing was kept; {hint}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = [
    "PretrainedWeights",
    "WEIGHTS_URL_ENV",
    "download_url",
    "file_sha256",
    "imagenet_checkpoint",
    "list_pretrained",
    "pretrained_weights",
    "reference_kwargs",
    "weights_cache_dir",
]
