"""Checkpoint reading, name matching and shape adaptation; safetensors save / load of medlite weights.

:func:`load_checkpoint` is what ``create_model(..., init=path)`` calls. It loads every checkpoint tensor
whose name and shape match the model and adapts the two mismatches that are expected when a public
ImageNet checkpoint initialises a chest X-ray model:

* the stem conv (``model.cfg.first_conv``) trained on RGB is summed to 1 channel (or spread over more
  channels), see :func:`adapt_input_conv`;
* a ViT position embedding trained for another grid is resampled bicubically.

A classifier (``model.cfg.classifier``) of another class count is skipped and keeps its fresh
initialisation; any other mismatch is skipped and listed in the returned :class:`InitReport`.
Checkpoints are never unpickled beyond ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from medlite.errors import ModelError
from medlite.models.layers import resample_pos_embed
from medlite.utils.atomic import atomic_write, with_default_mode

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
# Dict keys under which training frameworks nest the weights (Lightning, timm/DeiT, plain training scripts).
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


@dataclass
class InitReport:
    """What :func:`load_checkpoint` did with each tensor.

    Attributes:
        path: the checkpoint file.
        prefix: the key prefix stripped from checkpoint names (``""``, ``"module."``, ``"model."``, ...).
        loaded: model tensor names copied unchanged.
        adapted: ``(model name, how)`` for tensors copied after a shape adaptation.
        skipped: ``(checkpoint key, reason)`` for checkpoint tensors not used.
        missing: model tensor names the checkpoint has no tensor for (left at their initialisation;
            BatchNorm ``num_batches_tracked`` counters are not listed).
    """

    path: str
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    adapted: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: ``"w.pth: loaded 120, adapted 1 (conv1.weight), skipped 2 (fc.weight, fc.bias), ..."``"""

        def names(items: list[str]) -> str:
            shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            return f" ({shown})" if items else ""

        adapted = [k for k, _ in self.adapted]
        skipped = [k for k, _ in self.skipped]
        return (
            f"{Path(self.path).name}: loaded {len(self.loaded)}, adapted {len(adapted)}{names(adapted)}, "
            f"skipped {len(skipped)}{names(skipped)}, missing {len(self.missing)}{names(self.missing)}"
        )


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a stem conv weight ``(O, I, kh, kw)`` to ``in_chans`` input channels.

    The rules keep the response to a grey image unchanged (as timm's ``adapt_input_conv``): to 1 channel,
    sum over the input channels (a grey image fed as R=G=B gives the same activation); from 1 channel,
    repeat and divide by ``in_chans``; from 3 channels to ``C``, tile the RGB filters and scale by ``3 / C``.

    Args:
        weight: float conv weight of shape ``(O, I, kh, kw)``.
        in_chans: wanted input channels.

    Returns:
        ``(O, in_chans, kh, kw)`` tensor of ``weight``'s dtype.

    Raises:
        ModelError: for other channel combinations (e.g. 4 -> 2), which have no natural mapping.
    """
    out_ch, src = weight.shape[:2]
    if src == in_chans:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    elif src == 1:
        w = w.repeat(1, in_chans, 1, 1) / in_chans
    elif src == 3:
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3.0 / in_chans)
    else:
        raise ModelError(f"cannot adapt a {src}-channel stem conv to {in_chans} channels")
    return w.to(weight.dtype)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file, unwrapping ``state_dict`` / ``model`` containers.

    Args:
        path: ``.safetensors``, or ``.pth/.pt/.ckpt/.bin`` (read with ``torch.load(weights_only=True)``).

    Returns:
        name -> CPU tensor, names as stored (prefixes such as ``module.`` are kept).

    Raises:
        ModelError: the file is missing, has another suffix, cannot be read safely, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", *TORCH_SUFFIXES):
        raise ModelError(
            f"checkpoint {path}: unsupported suffix {suffix!r} (use .safetensors, .pth, .pt, .ckpt, .bin)"
        )
    try:
        obj: Any = (
            load_file(str(path), device="cpu")
            if suffix == ".safetensors"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except Exception as err:  # noqa: BLE001  (any failure to parse the file is the user's file's problem)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ModelError(f"cannot read checkpoint {path}: {reason}") from err
    for _ in range(3):  # containers nest at most a couple of levels (e.g. {"model": {"state_dict": ...}})
        if not isinstance(obj, dict) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = (
        {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    )
    if not tensors:
        raise ModelError(f"checkpoint {path} holds no tensors (expected a state dict)")
    return tensors


def best_prefix(keys: list[str], targets: set[str]) -> str:
    """The prefix whose removal makes the most checkpoint keys model names (ties: the shortest).

    Candidates are ``""`` and the first one or two dotted components of each key, which covers DDP's
    ``module.``, Lightning's ``model.`` (or any attribute the LightningModule keeps the net under) and both.
    """
    candidates = {""}
    for key in keys:
        parts = key.split(".")
        candidates.update(".".join(parts[:i]) + "." for i in (1, 2) if len(parts) > i)
    counts = {p: sum(k.startswith(p) and k[len(p) :] in targets for k in keys) for p in candidates}
    return max(sorted(candidates, key=lambda p: (len(p), p)), key=lambda p: counts[p])


def load_checkpoint(model: nn.Module, path: str | Path) -> InitReport:
    """Initialise ``model`` in place from a checkpoint, adapting what can be adapted.

    Args:
        model: a medlite model; ``model.cfg`` (set by ``create_model``) names the stem conv and classifier.
        path: checkpoint file (see :func:`read_checkpoint`).

    Returns:
        An :class:`InitReport`; a warning is issued when under half of the model's tensors were initialised.

    Raises:
        ModelError: the file cannot be read, or none of its tensors fits the model.
    """
    state = read_checkpoint(path)
    cfg = getattr(model, "cfg", None)
    stem = f"{cfg.first_conv}.weight" if cfg is not None and cfg.first_conv else None
    head = f"{cfg.classifier}." if cfg is not None and cfg.classifier else None
    target = model.state_dict()
    prefix = best_prefix(list(state), set(target))
    report = InitReport(path=str(path), prefix=prefix)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is None or name not in target:
            report.skipped.append((key, "not a model tensor"))
            continue
        want = target[name].shape
        if value.shape == want:
            to_load[name] = value
            report.loaded.append(name)
            continue
        how, adapted = _adapt(model, name, value, want, stem)
        if adapted is not None:
            to_load[name] = adapted
            report.adapted.append((name, how))
        elif head is not None and name.startswith(head):
            report.skipped.append((key, f"classifier {tuple(value.shape)} != {tuple(want)}, re-initialised"))
        else:
            report.skipped.append((key, how or f"shape {tuple(value.shape)} != model {tuple(want)}"))
    if not to_load:
        model_name = cfg.name if cfg is not None else type(model).__name__
        raise ModelError(
            f"checkpoint {path} does not fit model {model_name}: no tensor matches by name and shape "
            f"(checkpoint keys look like {', '.join(list(state)[:3])})"
        )
    present = {k[len(prefix) :] for k in state if k.startswith(prefix)}
    report.missing = [k for k in target if k not in present and not k.endswith("num_batches_tracked")]
    model.load_state_dict(to_load, strict=False)  # copy_ casts to each parameter's dtype and device
    countable = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(to_load) < len(countable) / 2:
        warnings.warn(
            f"only {len(to_load)} of {len(countable)} tensors initialised: {report.summary()}", stacklevel=2
        )
    return report


def _adapt(
    model: nn.Module, name: str, value: torch.Tensor, want: torch.Size, stem: str | None
) -> tuple[str, torch.Tensor | None]:
    """Try the known adaptations for one mismatching tensor: ``(description, tensor or None)``."""
    if name == stem and value.ndim == 4 and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
        try:
            return f"stem {value.shape[1]} -> {want[1]} input channels", adapt_input_conv(value, want[1])
        except ModelError as err:
            return str(err), None
    if name.split(".")[-1] == "pos_embed" and value.ndim == 3 and value.shape[-1] == want[-1]:
        prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        old_n, new_n = value.shape[1] - prefix_tokens, want[1] - prefix_tokens
        old_side, new_side = math.isqrt(old_n), math.isqrt(new_n)
        if old_side**2 == old_n and new_side**2 == new_n:
            grid = (new_side, new_side)
            resampled = resample_pos_embed(value, grid, (old_side, old_side), prefix_tokens, antialias=True)
            return f"pos_embed grid {old_side}x{old_side} -> {new_side}x{new_side}", resampled
    return "", None


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` to a ``.safetensors`` file atomically (temporary file + rename).

    Args:
        model: any module; parameters and buffers are saved as CPU tensors.
        path: destination ending in ``.safetensors``; parent folders are created.
        metadata: extra string metadata; ``medlite_model`` (the registered name) is added when known.

    Returns:
        The written path.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"weights file {path} must end in .safetensors")
    meta = {"format": "pt", **(metadata or {})}
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        meta.setdefault("medlite_model", cfg.name)
    # Copies break any storage sharing between entries, which safetensors refuses to write.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with_default_mode(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a ``.safetensors`` file written by :func:`save_weights` into ``model`` (in place).

    Args:
        model: the module to fill.
        path: a ``.safetensors`` file.
        strict: require exactly the model's names and shapes; otherwise load what matches by name and shape.

    Returns:
        ``(missing, unexpected)``: model names not in the file, and file names not used (shape mismatches
        included). Both are empty when ``strict`` succeeds.

    Raises:
        ModelError: the file is missing or unreadable, or (``strict``) does not match the model; the model
            is left untouched in that case.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"weights file {path} must end in .safetensors")
    state = read_checkpoint(path)
    target = model.state_dict()
    usable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    missing = [k for k in target if k not in usable]
    unexpected = [k for k in state if k not in usable]
    if strict and (missing or unexpected):
        raise ModelError(
            f"weights {path} do not match the model: {len(missing)} model tensors missing or mis-shaped "
            f"({', '.join(missing[:3])}), {len(unexpected)} unused ({', '.join(unexpected[:3])})"
        )
    model.load_state_dict(usable, strict=False)
    return missing, unexpected


def save_encoder(model: nn.Module, path: Path) -> Path:
    """Write the model's weights without its classifier (``model.cfg.classifier``) to ``path`` (.safetensors).

    ``create_model(name, init=path)`` then loads everything but the head, which keeps a fresh initialisation
    for any number of classes. The file is written atomically (temporary file + rename).
    """
    head = f"{model.cfg.classifier}." if model.cfg.classifier else None
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if head is None or not k.startswith(head)
    }
    metadata = {"format": "pt", "medlite_model": model.cfg.name, "medlite_part": "encoder"}
    with atomic_write(path, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))
    return path
