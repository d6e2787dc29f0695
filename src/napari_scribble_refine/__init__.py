"""Correct nucleus and cell segmentations with a few scribbles.

The public scripting API lives here; the napari widget is reached through the npe2 manifest
(``napari.yaml``) and is imported only when napari asks for it.
"""

from importlib.metadata import version

from .core import (
    RefineConfig,
    RefineResult,
    RefineSession,
    RefineStep,
    SlideSession,
    TorchModuleModel,
    TorchScriptModel,
    available_models,
    load_model,
    resolve_device,
)

__version__ = version("napari-scribble-refine")  # written once, in pyproject.toml
__all__ = [
    "RefineConfig",
    "RefineResult",
    "RefineSession",
    "RefineStep",
    "SlideSession",
    "TorchModuleModel",
    "TorchScriptModel",
    "__version__",
    "available_models",
    "load_model",
    "resolve_device",
]
