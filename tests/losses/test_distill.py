from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.errors import MedliteError
from medlite.losses import KDLoss, distillation_kl, soft_targets


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _kd_reference(student: np.ndarray, teachers: np.ndarray, y: np.ndarray, alpha: float, t: float) -> float:
    """alpha * CE + (1 - alpha) * T^2 * KL(p_t || p_s) (Hinton et al. 2015); p_t: mean over teachers."""
    student, teachers = student.astype(np.float64), teachers.astype(np.float64)
    ce = -np.mean(np.log(_softmax(student))[np.arange(len(y)), y])
    p_t = np.mean([_softmax(z / t) for z in teachers], axis=0)
    p_s = _softmax(student / t)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    return alpha * ce + (1 - alpha) * t**2 * kl


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("n_teachers", [1, 3])
def test_kd_loss_matches_numpy_reference(alpha: float, temperature: float, n_teachers: int) -> None:
    rng = np.random.default_rng(7)
    student = rng.normal(size=(6, 4)).astype(np.float32) * 3
    teachers = rng.normal(size=(n_teachers, 6, 4)).astype(np.float32) * 3
    y = rng.integers(0, 4, size=6)
    teacher_arg = torch.from_numpy(teachers[0] if n_teachers == 1 else teachers)
    loss = KDLoss(alpha, temperature)(torch.from_numpy(student), teacher_arg, torch.from_numpy(y))
    assert loss.item() == pytest.approx(_kd_reference(student, teachers, y, alpha, temperature), rel=1e-5)


def test_defaults_are_alpha_half_and_t4() -> None:
    loss = KDLoss()
    assert (loss.alpha, loss.temperature) == (0.5, 4.0)


def test_kl_is_zero_when_student_copies_teacher_and_grads_skip_teacher() -> None:
    teacher = torch.randn(5, 3, requires_grad=True)
    assert distillation_kl(teacher.detach().clone(), teacher, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(5, 3, requires_grad=True)
    distillation_kl(student, teacher, 4.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_soft_targets_average_teachers_in_probability_space() -> None:
    logits = torch.randn(2, 4, 3)
    expected = (logits[0] / 2).softmax(-1) / 2 + (logits[1] / 2).softmax(-1) / 2
    torch.testing.assert_close(soft_targets(logits, 2.0), expected)


def test_kd_loss_checks_arguments() -> None:
    with pytest.raises(MedliteError, match="kd_alpha"):
        KDLoss(alpha=1.5)
    with pytest.raises(MedliteError, match="kd_temperature"):
        KDLoss(temperature=0)
    with pytest.raises(MedliteError, match="same classes"):
        KDLoss()(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))
