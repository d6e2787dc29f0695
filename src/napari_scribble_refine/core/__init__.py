"""GUI-free engine: imports numpy, torch and scikit-image only, never napari or Qt."""

from .config import RefineConfig

__all__ = ["RefineConfig"]
