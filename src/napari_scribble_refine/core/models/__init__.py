"""Model adapters: one module per family, behind the protocol in :mod:`.base`."""

from .base import Features, HeadState, SegmentationModel

__all__ = ["Features", "HeadState", "SegmentationModel"]
