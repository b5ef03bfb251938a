"""Weight selection: initialise a small model with a subset of a larger model's weights (no training).

Xu et al., "Initializing Models with Larger Ones", ICLR 2024 (arXiv 2311.18823; METHODS.md §1), and the
complementary two-student variant of Tsutsumi et al. 2025 (arXiv 2508.20461; METHODS.md §2, step 3):

1. **Layer selection (first-N)** and **component mapping** are implicit, as in the official code: every
   student tensor is looked up *by name* in the teacher, so a student with fewer blocks reads only the
   teacher's first blocks of each stage (``stages.2.3`` exists in both), and each tensor maps to the one
   with the same role.
2. **Element selection**, independently along every axis of every tensor (teacher size ``D``, student
   size ``d <= D``), by :func:`select_indices`:

   * ``uniform`` (default): indices ``0, s, 2s, ...`` with ``s = D / d`` when ``d`` divides ``D``, else
     ``round(linspace(0, D - 1, d))`` (the official code's fixed rule);
   * ``consecutive``: the first ``d`` indices;
   * ``random-consistent``: a random subset drawn once per channel dimension and reused by every tensor
     that touches it, so residual paths, a block's expand -> depthwise -> project chain, BatchNorm buffers
     and ViT's query/key/value stay aligned;
   * ``random``: a fresh random subset per tensor axis (breaks that alignment; the paper's ablation that
     does clearly worse).

   A channel dimension is identified by its ``(D, d)`` pair: every axis with that pair gets the same
   indices. Axes of one dimension always share a pair, so this is consistent wherever consistency is needed
   (it also ties unrelated dimensions of equal sizes, which does no harm). Deterministic rules
   (``uniform``, ``consecutive``) are consistent by construction.
3. ``pair=0`` / ``pair=1`` give the two students of the dual-model method complementary subsets: with
   ``w = D / d``, ``floor(i * w)`` and ``floor(i * w + w / 2)`` for ``uniform`` (the even and the odd indices
   when ``D = 2d``; ``pair=0`` equals the single-student rule whenever ``d`` divides ``D``), the first and the
   last ``d`` indices for ``consecutive``, the two ends of one random permutation for the random rules. The
   two subsets are disjoint when ``D >= 2d`` and overlap (a warning says so) when ``d < D < 2d``.

Special axes: the spatial axes of conv kernels are centre-cropped (a 5x5 kernel gives its central 3x3); a
stem trained on another channel count is adapted first (:func:`~medlite.models.checkpoint.adapt_input_conv`);
a ViT position embedding for another grid is resampled first; ViT's fused ``qkv`` axis is treated as three
stacked copies of the embedding dimension. The classifier (``model.cfg.classifier``) is skipped and keeps
its fresh initialisation; BatchNorm running statistics are selected with the same indices as their channels;
weights are copied without rescaling (the paper does none).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from medlite.errors import ModelError
from medlite.models.checkpoint import adapt_input_conv, best_prefix, read_checkpoint
from medlite.models.layers import resample_pos_embed

SelectionMethod = Literal["uniform", "consecutive", "random-consistent", "random"]
SELECTION_METHODS: tuple[str, ...] = ("uniform", "consecutive", "random-consistent", "random")

# Tensors whose first axis stacks several copies of one channel dimension: ViT's fused query/key/value.
_STACKED_AXIS0 = {"qkv.weight": 3, "qkv.bias": 3}


@dataclass
class SelectionReport:
    """What :func:`select_weights` did.

    Attributes:
        teacher: the teacher file (or ``"<module>"``).
        method: the element-selection rule.
        pair: ``None`` for a single student, else which of two complementary students (0 or 1).
        selected: student tensor names filled from the teacher (a subset of the teacher's tensor).
        copied: student tensor names whose shape equals the teacher's (copied whole).
        skipped: student tensor names left at their initialisation (the classifier).
        overlapping: ``(D, d)`` channel pairs whose complementary subsets overlap (``d < D < 2d``).
    """

    teacher: str
    method: str
    pair: int | None = None
    selected: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    overlapping: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``"w.safetensors (uniform): selected 120, copied 40, skipped 2 (classifier.weight, ...)"``."""
        shown = ", ".join(self.skipped[:2]) + (", ..." if len(self.skipped) > 2 else "")
        side = "" if self.pair is None else f", student {'AB'[self.pair]} of a complementary pair"
        return (f"{Path(self.teacher).name} ({self.method}{side}): selected {len(self.selected)}, copied "
                f"{len(self.copied)}, skipped {len(self.skipped)}" + (f" ({shown})" if shown else ""))


def _pair_seed(seed: int, *key: object) -> int:
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def select_indices(teacher_size: int, student_size: int, method: str = "uniform", *, pair: int | None = None,
                   seed: int = 0, key: object = None) -> torch.Tensor:
    """Indices of the teacher axis that the student keeps.

    Args:
        teacher_size: ``D``, the teacher's axis length.
        student_size: ``d``, the student's (``1 <= d <= D``).
        method: one of :data:`SELECTION_METHODS`.
        pair: ``None`` for a single student; 0 or 1 for the first or second of two complementary students.
        seed: seed of the random rules.
        key: extra identity of the axis for ``random`` (a fresh subset per key); ignored by the other rules,
            whose subsets depend only on ``(D, d)`` (that is what makes ``random-consistent`` consistent).

    Returns:
        int64 (d,) strictly increasing indices in ``[0, D)``; ``arange(D)`` when ``d == D``.
    """
    big, small = int(teacher_size), int(student_size)
    if not 1 <= small <= big:
        raise ModelError(f"cannot select {small} of {big} indices")
    if small == big:
        return torch.arange(big)
    if pair not in (None, 0, 1):
        raise ModelError(f"pair must be None, 0 or 1, got {pair!r}")
    if method == "uniform":
        if pair is not None:  # floor(i * D/d + pair * D/(2d)), in exact integer arithmetic
            return (2 * torch.arange(small) * big + pair * big) // (2 * small)
        if big % small == 0:
            return torch.arange(small) * (big // small)
        return torch.round(torch.linspace(0, big - 1, small)).long()
    if method == "consecutive":
        return torch.arange(big - small, big) if pair == 1 else torch.arange(small)
    if method in ("random-consistent", "random"):
        ident = (big, small) if method == "random-consistent" else (big, small, key)
        perm = torch.randperm(big, generator=torch.Generator().manual_seed(_pair_seed(seed, *ident)))
        return perm[big - small:].sort().values if pair == 1 else perm[:small].sort().values
    raise ModelError(f"unknown selection method {method!r}; choose one of {', '.join(SELECTION_METHODS)}")


def _select_tensor(name: str, value: torch.Tensor, want: torch.Size, method: str, pair: int | None,
                   seed: int) -> torch.Tensor:
    """The student's ``want``-shaped slice of the teacher tensor ``value`` (see the module docstring)."""
    out = value
    for axis, (big, small) in enumerate(zip(value.shape, want, strict=True)):
        if big == small:
            continue
        if small > big:
            raise ModelError(f"student tensor {name!r} axis {axis} has {small} > the teacher's {big} entries "
                             f"(the teacher must be at least as large in every dimension)")
        if value.ndim == 4 and axis >= 2:  # spatial axis of a conv kernel: keep the centre
            start = (big - small) // 2
            index = torch.arange(start, start + small)
        elif axis == 0 and any(name.endswith(s) for s in _STACKED_AXIS0):
            chunks = _STACKED_AXIS0[next(s for s in _STACKED_AXIS0 if name.endswith(s))]
            if big % chunks or small % chunks:
                raise ModelError(f"student tensor {name!r}: axis 0 is not {chunks} stacked equal parts")
            part = select_indices(big // chunks, small // chunks, method, pair=pair, seed=seed, key=(name, axis))
            index = torch.cat([part + c * (big // chunks) for c in range(chunks)])
        else:
            index = select_indices(big, small, method, pair=pair, seed=seed, key=(name, axis))
        out = out.index_select(axis, index)
    return out


def _prepare_teacher_tensor(student: nn.Module, name: str, value: torch.Tensor, want: torch.Size) -> torch.Tensor:
    """Adaptations before selection: stem input channels, ViT position-embedding grid."""
    cfg = getattr(student, "cfg", None)
    if cfg is not None and cfg.first_conv and name == f"{cfg.first_conv}.weight" and value.ndim == 4:
        return adapt_input_conv(value, want[1]) if value.shape[1] != want[1] else value
    if name.split(".")[-1] == "pos_embed" and value.ndim == 3 and value.shape[1] != want[1]:
        prefix = int(getattr(student, "num_prefix_tokens", 1))
        old_n, new_n = value.shape[1] - prefix, want[1] - prefix
        old_side, new_side = math.isqrt(max(old_n, 0)), math.isqrt(max(new_n, 0))
        if old_side**2 != old_n or new_side**2 != new_n or new_n < 1:
            # Selecting along the token axis would scramble positions.
            raise ModelError(f"student tensor {name!r}: cannot map {value.shape[1]} teacher tokens to {want[1]} "
                             f"(not square grids with {prefix} prefix token(s))")
        return resample_pos_embed(value, (new_side, new_side), (old_side, old_side), prefix, antialias=True)
    return value


def _teacher_state(teacher: nn.Module | dict[str, torch.Tensor] | str | Path) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(teacher, nn.Module):
        return teacher.state_dict(), "<module>"
    if isinstance(teacher, dict):
        return teacher, "<state dict>"
    path = Path(teacher)
    if path.is_dir():
        # Run directories are resolved above this layer (medlite.select_weights, the training workflow).
        raise ModelError(f"{path}: a folder; give a weights file, or a finished run directory to "
                         "medlite.select_weights")
    return read_checkpoint(path), str(path)


def select_weights(student: nn.Module, teacher: nn.Module | dict[str, torch.Tensor] | str | Path, *,
                   method: str = "uniform", pair: int | None = None, seed: int = 0) -> SelectionReport:
    """Fill ``student`` in place with weights selected from a larger ``teacher`` of the same family.

    Args:
        student: a zoo model (``create_model``); its classifier keeps its initialisation.
        teacher: a module, a state dict, a weights file (``.safetensors``/``.pth``...) or a finished run
            directory (its ``model.safetensors``).
        method: one of :data:`SELECTION_METHODS`.
        pair: ``None`` for one student; 0 or 1 for the first or second of two complementary students
            (``dual-skd``); a warning says when the pair's subsets overlap.
        seed: seed of the random rules.

    Returns:
        A :class:`SelectionReport`.

    Raises:
        ModelError: the pair is not supported; the message names the first student tensor that has no
            teacher counterpart, another rank, or a larger size along some axis. The student is unchanged then.
    """
    if method not in SELECTION_METHODS:
        raise ModelError(f"unknown selection method {method!r}; choose one of {', '.join(SELECTION_METHODS)}")
    state, origin = _teacher_state(teacher)
    target = student.state_dict()
    prefix = best_prefix(list(state), set(target))
    teacher_tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    cfg = getattr(student, "cfg", None)
    if cfg is None or not cfg.classifier:
        raise ModelError("select_weights needs a zoo model from create_model (its cfg names the classifier to skip)")
    head = f"{cfg.classifier}."
    report = SelectionReport(teacher=origin, method=method, pair=pair)
    new_state: dict[str, torch.Tensor] = {}
    pairs: set[tuple[int, int]] = set()
    for name, want in target.items():
        if name.endswith("num_batches_tracked"):  # BatchNorm step counters: nothing to select
            continue
        if name.startswith(head):
            report.skipped.append(name)
            continue
        if name not in teacher_tensors:
            raise ModelError(f"weight selection from {origin}: student tensor {name!r} has no counterpart in "
                             f"the teacher (not the same architecture family?)")
        value = _prepare_teacher_tensor(student, name, teacher_tensors[name].detach().cpu(), want.shape)
        if value.ndim != want.ndim:
            raise ModelError(f"weight selection from {origin}: student tensor {name!r} has shape "
                             f"{tuple(want.shape)}, the teacher's {tuple(value.shape)} (another rank)")
        if value.shape == want.shape:
            new_state[name] = value.clone()
            report.copied.append(name)
            continue
        try:
            new_state[name] = _select_tensor(name, value, want.shape, method, pair, seed).clone()
        except ModelError as err:
            raise ModelError(f"weight selection from {origin}: {err}") from None
        report.selected.append(name)
        channel_axes = range(2) if value.ndim == 4 else range(value.ndim)  # not a kernel's spatial axes
        pairs.update((value.shape[a], want.shape[a]) for a in channel_axes
                     if want.shape[a] < value.shape[a] < 2 * want.shape[a])
    student.load_state_dict(new_state, strict=False)
    report.overlapping = sorted(pairs) if pair is not None else []
    if pair == 1 and pairs:
        warnings.warn(f"complementary weight selection: channel pairs {report.overlapping[:4]} have D < 2d, so "
                      f"the two students share some teacher channels", UserWarning, stacklevel=2)
    return report


__all__ = ["SELECTION_METHODS", "SelectionReport", "select_indices", "select_weights"]
