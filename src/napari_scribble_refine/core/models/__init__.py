"""Model adapters: one module per family, behind the protocol in :mod:`.base`."""

from .base import Features, HeadState, SegmentationModel
from .module import TorchModuleModel
from .torchscript import TorchScriptModel

__all__ = ["Features", "HeadState", "SegmentationModel", "TorchModuleModel", "TorchScriptModel"]
