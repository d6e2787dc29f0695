"""GUI-free engine: imports numpy, torch, scikit-image, dask and zarr only, never napari or Qt."""

from .config import RefineConfig
from .devices import resolve_device
from .memory import TooLargeError
from .models.module import TorchModuleModel
from .models.registry import available_models, load_model
from .models.torchscript import TorchScriptModel
from .session import RefineSession
from .slide import SlideSession
from .steps import RefineResult, RefineStep

__all__ = [
    "RefineConfig",
    "RefineResult",
    "RefineSession",
    "RefineStep",
    "SlideSession",
    "TorchModuleModel",
    "TooLargeError",
    "TorchScriptModel",
    "available_models",
    "load_model",
    "resolve_device",
]
