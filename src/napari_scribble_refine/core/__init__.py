"""GUI-free engine: imports numpy, torch and scikit-image only, never napari or Qt."""

from .config import RefineConfig
from .devices import resolve_device
from .memory import TooLargeError
from .models.module import TorchModuleModel
from .models.registry import available_models, load_model
from .models.torchscript import TorchScriptModel
from .session import RefineSession
from .steps import RefineResult, RefineStep

__all__ = [
    "RefineConfig",
    "RefineResult",
    "RefineSession",
    "RefineStep",
    "TorchModuleModel",
    "TooLargeError",
    "TorchScriptModel",
    "available_models",
    "load_model",
    "resolve_device",
]
