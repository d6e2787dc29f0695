"""Correct nucleus and cell segmentations with a few scribbles.

The public scripting API lives here; the napari widget is reached through the npe2 manifest
(``napari.yaml``) and is imported only when napari asks for it.
"""

from .core import (
    RefineConfig,
    RefineResult,
    RefineSession,
    RefineStep,
    TorchModuleModel,
    TorchScriptModel,
    available_models,
    load_model,
    resolve_device,
)

__version__ = "0.1.0"
__all__ = [
    "RefineConfig",
    "RefineResult",
    "RefineSession",
    "RefineStep",
    "TorchModuleModel",
    "TorchScriptModel",
    "__version__",
    "available_models",
    "load_model",
    "resolve_device",
]
