"""The explainer template: layer lookup, hooks, targets, upsampling and normalisation shared by every method.

Design follows pytorch-grad-cam (Gildenblat et al.), with its leaks and hidden knobs removed:

* an :class:`Explainer` is a context manager; every hook it registers lives for one call and is removed in a
  ``finally`` block, and :meth:`Explainer.close` (run by ``__exit__``) removes anything left, so creating
  explainers in a loop or hitting an exception never accumulates hooks;
* a :class:`CAMExplainer` method only supplies the low-resolution map of its layer
  (:meth:`CAMExplainer._layer_cam`); the base runs the forward pass, captures the layer output (cloned, so a
  later in-place ReLU cannot change it), picks targets, applies the ReLU and bilinear upsampling to the
  input size (in the order of the method's reference code) and min-max normalises;
* a target is "the logit of class c"; a single-logit binary head is treated as two classes with scores
  ``(-z, z)`` and probabilities ``(1 - sigmoid(z), sigmoid(z))`` (MONAI #5530);
* token layers ``(B, T, D)`` of a ViT are folded to a ``(B, D, h, w)`` grid (prefix/class tokens dropped);
* constructors never switch the model's mode; a model left in training mode only gets a warning.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medlite.errors import MedliteError, ModelError
from medlite.models.spatial import to_spatial
from medlite.models.spatial import token_grid as _token_grid

TargetSpec = int | Sequence[int] | torch.Tensor | None


@dataclass
class Explanation:
    """What an explainer returns for a batch (tensors stay on the input's device).

    Attributes:
        maps: float32 (B, H, W) saliency at the model-input size, each map min-max normalised to [0, 1]
            (an all-zero map means the method found no positive evidence).
        targets: int64 (B,) explained class per image.
        probs: float32 (B,) the model's probability of the explained class on the unperturbed input.
        method: method name (``"gradcam"``, ``"scorecam"``, ``"lime"``).
        layer: dotted name of the explained layer (``None`` for model-agnostic methods).
    """

    maps: torch.Tensor
    targets: torch.Tensor
    probs: torch.Tensor
    method: str
    layer: str | None = None


# ------------------------------------------------------------------------------------------- scores/targets
def class_scores(logits: torch.Tensor) -> torch.Tensor:
    """Per-class scores to explain: logits (B, C), or ``(-z, z)`` (B, 2) for a single-logit head (B, 1)."""
    return torch.cat([-logits, logits], dim=1) if logits.shape[1] == 1 else logits


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, max(C, 2)): softmax, or ``(1 - sigmoid(z), sigmoid(z))`` for one logit."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=1)
    return logits.softmax(dim=1)


def resolve_targets(target: TargetSpec, probs: torch.Tensor) -> torch.Tensor:
    """int64 (B,) targets: the predicted class if ``target`` is None, else ``target`` checked, broadcast."""
    batch, n_classes = probs.shape
    if target is None:
        return probs.argmax(dim=1)
    t = torch.as_tensor(target, dtype=torch.int64, device=probs.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise MedliteError(f"target: got {t.numel()} targets for a batch of {batch} images")
    if (t < 0).any() or (t >= n_classes).any():
        raise MedliteError(f"target: {t.tolist()} out of range; this model has classes 0..{n_classes - 1}")
    return t.clone()


# ------------------------------------------------------------------------------------------------- layers
def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``model`` (what ``layer=`` accepts), in definition order."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The submodule called ``name`` (dotted), or the model cfg's default ``cam_layer`` when ``name`` is None.

    Raises:
        ModelError: unknown name (the message lists the valid names, closest first) or no default layer.
    """
    cfg = getattr(model, "cfg", None)
    if not name:
        name = getattr(cfg, "cam_layer", "") or ""
        if not name:
            raise ModelError("layer: the model has no default cfg.cam_layer; pass a dotted layer name")
    modules = dict(model.named_modules())
    if name not in modules:
        names = layer_names(model)
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        top_level = [n for n in names if "." not in n]
        listing = ", ".join(names) if len(names) <= 60 else ", ".join(close + top_level)
        model_name = getattr(cfg, "name", type(model).__name__)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(f"layer: {name!r} is not a layer of {model_name}; {hint}valid names: {listing}"
                         + ("" if len(names) <= 60 else f" ... ({len(names)} in all; "
                            "medlite.explain.layer_names(model) lists them)"))
    return name, modules[name]


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (H, W) map of a (B, H, W) batch to [0, 1]; non-finite values become 0.

    A constant map (no evidence, or a dead layer) becomes all zeros instead of 0/0 = NaN.
    """
    if not torch.isfinite(maps).all():
        warnings.warn("saliency map had NaN/inf values (set to 0); check the input range and the model",
                      RuntimeWarning, stacklevel=3)
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 1e-12 * hi.abs().clamp_min(1.0), (flat - lo) / span.clamp_min(1e-30), 0.0)
    return out.reshape(maps.shape).to(torch.float32)


# -------------------------------------------------------------------------------------------- explainers
class Explainer(ABC):
    """Base of every method: validation, targets and probabilities, hook bookkeeping, context management.

    Subclasses implement :meth:`_attribute`. Use: ``with Method(model) as explainer: result = explainer(x)``.

    Args:
        model: any classifier ``(B, C, H, W) -> (B, K)`` logits; its mode is left as it is (call ``eval()``).
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # context management -------------------------------------------------------------------------------
    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook this explainer still holds (normally none: calls clean up after themselves)."""
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, module: nn.Module, fn: Any) -> None:
        self._handles.append(module.register_forward_hook(fn))

    # the call -----------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, target: TargetSpec = None) -> Explanation:
        """Explain a batch.

        Args:
            x: float (B, C, H, W) model input, already normalised the way the model expects.
            target: class index for every image, one per image (sequence or (B,) tensor), or ``None`` for
                the predicted class. Single-logit heads have classes 0 (negated logit) and 1.

        Returns:
            An :class:`Explanation` with (B, H, W) maps in [0, 1].
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MedliteError(f"x: expected a float (B, C, H, W) tensor, got {shape}")
        if self.model.training:
            warnings.warn(f"{self.name}: the model is in training mode (dropout and batch-norm statistics "
                          "change the maps); call model.eval() first", UserWarning, stacklevel=2)
        # Gradient methods must run even when the caller sits in inference_mode / no_grad, and on a clone:
        # tensors created under inference_mode cannot take part in autograd.
        with torch.inference_mode(False):
            x = x.detach().clone()
            try:
                with torch.no_grad():
                    logits = self._first_forward(x)
                probs = class_probs(logits.float())
                targets = resolve_targets(target, probs)
                with torch.enable_grad() if self.needs_gradients else torch.no_grad():
                    raw = self._attribute(x, targets)
            finally:
                self.close()
                self._release()
            maps = normalise_maps(raw.detach())
        return Explanation(maps=maps, targets=targets, probs=probs.gather(1, targets[:, None])[:, 0],
                           method=self.name, layer=getattr(self, "layer_name", None))

    def _first_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unperturbed forward pass (B, K) logits; CAM methods capture their layer here."""
        return self.model(x)

    def _release(self) -> None:  # noqa: B027  (optional hook: most methods keep no per-call state)
        """Drop per-call state so nothing outlives the call."""

    @abstractmethod
    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unnormalised non-negative saliency (B, H, W) at the input size for ``targets`` (B,)."""


class CAMExplainer(Explainer):
    """Template of class-activation-map methods: the subclass supplies the low-resolution map only.

    Args:
        model: classifier with a spatial layer (every medlite zoo model has ``cfg.cam_layer``).
        layer: dotted name of the layer to explain; ``None`` uses ``model.cfg.cam_layer``.
    """

    # Grad-CAM: ReLU, then upsample (pytorch-grad-cam); official Score-CAM: upsample and sum, then ReLU.
    relu_after_upsampling: ClassVar[bool] = False

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__(model)
        self.layer_name, self.layer = resolve_layer(model, layer)
        self._activations: torch.Tensor | None = None  # (B, K, h, w) of the current call only
        self._tokens = False  # whether the layer emits (B, T, D) tokens rather than a (B, C, h, w) map
        self._input_hw = (1, 1)  # (H, W) of the current input, to fold tokens into a grid

    def _first_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._input_hw = (int(x.shape[2]), int(x.shape[3]))

        def capture(_module: nn.Module, _inputs: Any, out: Any) -> None:
            self._tokens = isinstance(out, torch.Tensor) and out.ndim == 3
            # A clone: a later in-place op (ReLU(inplace=True), +=) must not rewrite what we explain.
            self._activations = to_spatial(out, self.layer_name, self._input_hw).detach().float().clone()

        self._hook(self.layer, capture)
        try:
            logits = self.model(x)
        finally:
            self.close()
        if self._activations is None:
            raise ModelError(f"layer: {self.layer_name!r} did not run in the model's forward pass")
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            got = getattr(logits, "shape", type(logits).__name__)
            raise ModelError(f"model output must be (B, classes) logits, got {got}")
        return logits

    def _release(self) -> None:
        self._activations = None

    @contextlib.contextmanager
    def spatial_module(self) -> Iterator[nn.Module]:
        """A module whose output is the layer's (B, C, h, w) map, for libraries that hook a module (captum).

        For a spatial layer that is the layer itself. For a token layer, a temporary forward hook routes the
        tokens through a parameter-free fold/unfold pair, so the folded grid is the output of a module; the
        values reaching the rest of the network are unchanged. The hook is removed on exit.
        """
        if not self._tokens:
            yield self.layer
            return
        fold = _TokenFold()

        def route(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            prefix, grid = _token_grid(out, self._input_hw)
            return fold.unfold(out[:, :prefix], fold(out[:, prefix:], grid))

        handle = self.layer.register_forward_hook(route)
        try:
            yield fold
        finally:
            handle.remove()

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        low = self._layer_cam(x, targets).float()[:, None]
        if self.relu_after_upsampling:
            return F.relu(F.interpolate(low, size=x.shape[2:], mode="bilinear", align_corners=False))[:, 0]
        return F.interpolate(F.relu(low), size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]

    @abstractmethod
    def _layer_cam(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Signed class-activation map (B, h, w) at the layer's resolution (ReLU and upsampling follow)."""


class _TokenFold(nn.Module):
    """(B, h*w, D) patch tokens -> (B, D, h, w) grid; :meth:`unfold` puts the grid back behind the prefix."""

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid[0], grid[1])

    @staticmethod
    def unfold(prefix: torch.Tensor, grid_map: torch.Tensor) -> torch.Tensor:
        return torch.cat([prefix, grid_map.flatten(2).transpose(1, 2)], dim=1)
