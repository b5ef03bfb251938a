"""Small, composable training losses (one concept per module, as lightly's ``loss`` package)."""

from medlite.losses.contrastive import NTXentLoss
from medlite.losses.coral import CORALLoss, feature_covariance
from medlite.losses.distill import KDLoss, distillation_kl, soft_targets

__all__ = ["CORALLoss", "KDLoss", "NTXentLoss", "distillation_kl", "feature_covariance", "soft_targets"]
