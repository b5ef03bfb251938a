"""Teacher-led knowledge distillation (HybridNet-XR -KD; Mir & Rizvi 2025, METHODS.md §3).

The student is trained with ``alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)``
(:class:`~medlite.losses.distill.KDLoss`; alpha 0.5, T 4 by default). Teachers are

* finished run directories (``--teacher RUNDIR``, repeatable: their softened distributions are averaged), or
* a zoo model with a checkpoint (``--teacher-model NAME --teacher-init FILE``) whose classifier has the
  run's classes.

Teachers are frozen and always in eval mode; they are kept out of the task's parameters and checkpoints
(a VGG-19 teacher would otherwise add 550 MB to every ``last.ckpt``) and rebuilt from their specification on
``--resume``. Each teacher sees the student's augmented image, re-normalised to its own intensity convention
and channel count. With augmentation off, a teacher's output depends only on the image, so its logits are
cached by image content in ``RUNDIR/teacher_logits.npz`` and computed once per image for the whole run.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlite.config import RunConfig
from medlite.data.prepared import PreparedData
from medlite.errors import MedliteError
from medlite.losses.distill import KDLoss
from medlite.models import create_model
from medlite.models.inputs import normalise_batch
from medlite.paradigms.task import ClassifierTask
from medlite.rundir import layout, store
from medlite.utils import atomic

#: File of the teacher-logit cache inside the run directory.
TEACHER_CACHE = "teacher_logits.npz"


def load_teachers(cfg: RunConfig, classes: list[str]) -> list[tuple[nn.Module, int, str]]:
    """Build the frozen teachers of a run config: ``(model in eval mode, in_chans, description)`` each.

    Raises:
        MedliteError: no teacher given, a teacher run with other classes, or a ``teacher_init`` that has no
            classifier for ``len(classes)`` classes (a teacher with a random head would teach noise).
    """
    t = cfg.train
    teachers: list[tuple[nn.Module, int, str]] = []
    for spec in t.teacher:
        model, teacher_cfg, info = store.load_run_model(spec)
        if info["classes"] != classes:
            raise MedliteError(
                f"--teacher {spec}: classes {info['classes']} differ from the data's {classes}"
            )
        if (teacher_cfg.preprocess.size, teacher_cfg.preprocess.equalize) != (
            cfg.preprocess.size,
            cfg.preprocess.equalize,
        ):
            warnings.warn(
                f"--teacher {spec} was trained with other preprocessing (size "
                f"{teacher_cfg.preprocess.size}, equalize {teacher_cfg.preprocess.equalize}); it sees the "
                f"student's images",
                UserWarning,
                stacklevel=2,
            )
        weights = Path(spec) / layout.WEIGHTS
        teachers.append(
            (model, int(info["in_chans"]), f"{spec}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}")
        )
    if t.teacher_model is not None:
        if t.teacher_init is None:
            raise MedliteError(
                "--teacher-model needs --teacher-init FILE (a checkpoint with the run's classes)"
            )
        init = store.resolve_init(t.teacher_init)
        model = create_model(
            t.teacher_model, num_classes=len(classes), in_chans=cfg.preprocess.channels, init=init
        )
        head = f"{model.cfg.classifier}."
        report = model.init_report
        if any(k.startswith(head) for k in report.missing) or any(head in k for k, _ in report.skipped):
            raise MedliteError(
                f"--teacher-init {t.teacher_init}: no {t.teacher_model} classifier for "
                f"{len(classes)} classes in it; fine-tune the teacher first and pass --teacher RUNDIR"
            )
        stat = Path(init).stat()
        teachers.append(
            (
                model.eval(),
                cfg.preprocess.channels,
                f"{t.teacher_model}:{init}:{stat.st_size}:{stat.st_mtime_ns}",
            )
        )
    if not teachers:
        raise MedliteError(
            "--paradigm kd needs a teacher: --teacher RUNDIR or --teacher-model NAME --teacher-init FILE"
        )
    for model, _, _ in teachers:
        model.requires_grad_(False)
    return teachers


class KDTask(ClassifierTask):
    """Distil one or more frozen teachers into the student ``model``.

    Args:
        model: the student (a zoo model).
        teachers: ``(teacher, in_chans)`` pairs; each teacher outputs ``num_classes`` logits.
        alpha: weight of the hard-label CE in [0, 1].
        temperature: softening temperature T > 0.
        cache_path: ``.npz`` file for cached teacher logits, or ``None`` to always run the teachers (required
            whenever augmentation is on, since the teacher must see the augmented image).
        cache_signature: a string naming the teachers; a cache file written for other teachers is ignored.
        **kwargs: :class:`ClassifierTask` settings.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        teachers: list[tuple[nn.Module, int]],
        alpha: float = 0.5,
        temperature: float = 4.0,
        cache_path: Path | None = None,
        cache_signature: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if not teachers:
            raise MedliteError("KDTask needs at least one teacher")
        if cache_path is not None and self.augment is not None:
            raise MedliteError("teacher logits can only be cached with augmentation off (--augment none)")
        # A plain list, not an nn.ModuleList: teachers stay out of parameters(), state_dict() and checkpoints.
        self._teachers = [(teacher.eval(), int(in_chans)) for teacher, in_chans in teachers]
        self.kd_loss = KDLoss(alpha, temperature)
        self.cache_path = cache_path
        self.cache_signature = cache_signature
        self._cache: dict[bytes, np.ndarray] = {}
        self._cache_dirty = False
        if cache_path is not None and cache_path.is_file():
            self._load_cache(cache_path)

    @classmethod
    def from_config(cls, model: nn.Module, *, cfg: RunConfig, data: PreparedData, out: Path,
                    **kwargs: Any) -> KDTask:
        teachers = load_teachers(cfg, data.classes)
        cache = out / TEACHER_CACHE if cfg.train.augment == "none" else None
        signature = "|".join(desc for _, _, desc in teachers)
        return cls(
            model,
            teachers=[(m, c) for m, c, _ in teachers],
            alpha=cfg.train.kd_alpha,
            temperature=cfg.train.kd_temperature,
            cache_path=cache,
            cache_signature=signature,
            **kwargs,
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for teacher, _ in self._teachers:
            teacher.to(self.device)
            if self.channels_last:
                teacher.to(memory_format=torch.channels_last)

    # -- teacher outputs ------------------------------------------------------------------------------
    @torch.no_grad()
    def _run_teachers(self, x01: torch.Tensor) -> torch.Tensor:
        """Teacher logits (K, B, C) for images with intensities in [0, 1], (B, 1, S, S)."""
        logits = []
        for teacher, in_chans in self._teachers:
            if next(teacher.parameters()).device != x01.device:
                teacher.to(x01.device)
            x = normalise_batch(x01, float(teacher.cfg.mean), float(teacher.cfg.std), in_chans)
            if self.channels_last and x.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            logits.append(teacher(x).float())
        return torch.stack(logits)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits (K, B, C) for the student input ``x`` (B, in_chans, S, S), normalised."""
        # Undo the student's normalisation on one channel: the teachers see exactly the student's image.
        x01 = x[:, :1].float() * self.std + self.mean
        if self.cache_path is None:
            return self._run_teachers(x01)
        # Without augmentation the input is a fixed function of the cached image, so it identifies the image.
        keys = [
            hashlib.blake2b(sample.tobytes(), digest_size=16).digest()
            for sample in x01.detach().cpu().contiguous().numpy()
        ]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            fresh = self._run_teachers(x01[missing]).cpu().numpy()
            for j, i in enumerate(missing):
                self._cache[keys[i]] = fresh[:, j]
            self._cache_dirty = True
        return torch.from_numpy(np.stack([self._cache[k] for k in keys], axis=1)).to(x.device)

    def training_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``alpha * CE + (1 - alpha) * T^2 * KL(teachers || student)`` for one prepared batch."""
        return self.kd_loss(
            self.model(x),
            self.teacher_logits(x),
            targets,
            weight=self.class_weights,
            label_smoothing=self.label_smoothing,
        )

    # -- cache persistence ----------------------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        if self.cache_path is not None and self._cache_dirty and self.global_rank == 0:
            keys = np.frombuffer(b"".join(self._cache), dtype=np.uint8).reshape(-1, 16)
            buffer = io.BytesIO()
            np.savez(
                buffer,
                keys=keys,
                logits=np.stack(list(self._cache.values())),
                signature=np.array(self.cache_signature),
            )
            with atomic.atomic_write(self.cache_path, "wb") as handle:
                handle.write(buffer.getvalue())
            self._cache_dirty = False

    def _load_cache(self, path: Path) -> None:
        with np.load(path) as stored:
            if str(stored["signature"]) != self.cache_signature:
                warnings.warn(
                    f"{path}: written for other teachers; recomputing the teacher logits",
                    UserWarning,
                    stacklevel=2,
                )
                return
            self._cache = {bytes(k): v for k, v in zip(stored["keys"], stored["logits"], strict=True)}
