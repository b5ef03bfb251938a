"""medlite's pure-PyTorch model zoo; importing this package registers every family."""

from medlite.models import (  # noqa: F401  (imported for their @register_model side effects)
    efficientnet_lite,
    hybridnet_xr,
    mobilenet,
    resnet,
    squeezenet,
    vgg,
    vit,
)
from medlite.models.factory import create_model
from medlite.models.registry import ModelCfg, get_model_cfg, list_models, register_model

__all__ = ["ModelCfg", "create_model", "get_model_cfg", "list_models", "register_model"]
