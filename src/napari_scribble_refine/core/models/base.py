"""The adapter protocol between a segmentation network and a refinement session.

Every model family (built-in HoVer-Net, any ``torch.nn.Module``, TorchScript files, ...)
is wrapped in a :class:`SegmentationModel`. The session only talks to this interface:

* ``features(image)`` runs the frozen trunk once per 2D image (no gradients) and returns a
  dict of tensors, **each shaped [1, F_k, H, W] and aligned pixel for pixel with the image**
  (the adapter pads, crops and rescales internally so the geometry is hidden);
* ``head(features)`` maps such a dict, or any spatial crop of it, or a gather of single
  pixels shaped [P, F_k, 1, 1] when ``head_is_pointwise``, to class logits [N, C, h, w]
  where C = ``len(class_names)`` and class 0 is background;
* ``head_module`` holds exactly the parameters that refinement tunes.

Networks stay in eval mode throughout (frozen BatchNorm keeps its running statistics); only
``requires_grad`` of the head's parameters is switched on during refinement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

Features = dict[str, torch.Tensor]
"""Cached trunk output: name -> tensor [N, F, H, W] aligned with the image's pixels."""

HeadState = dict[str, Any]
"""A snapshot of the head: ``{"weights": {name: tensor}, "class_names": [...]}``."""


class SegmentationModel(ABC):
    """A pre-trained network split into a frozen trunk and a tunable head.

    Attributes
    ----------
    name : str
        Short name shown to users (registry name or file name).
    class_names : list of str
        Output classes, index 0 = background.
    in_channels : int
        1 for greyscale models, 3 for RGB models.
    head_is_pointwise : bool
        True when the head has only 1x1 convolutions, eval-mode norms and activations, so
        it can be trained on gathered feature vectors of scribbled pixels alone.
    head_halo : int
        Receptive-field radius of the head in image pixels (0 when point-wise). Spatial heads
        are trained on crops around the scribbles grown by this halo.
    trunk_is_cached : bool
        False for opaque models that cannot be split: ``features`` then returns the prepared
        input and ``head`` runs the full forward (the trunk's weights stay frozen).
    trunk_halo : int
        Context (px) the trunk reads around each tile of a large image, so that tiles join
        without seams (64 unless the adapter knows its receptive field).
    size_multiple : int
        The trunk takes inputs whose sides are multiples of this (its total stride); tiles
        and their halos are aligned to it.
    """

    name: str = "model"
    class_names: list[str]
    in_channels: int = 1
    head_is_pointwise: bool = False
    head_halo: int = 0
    trunk_is_cached: bool = True
    trunk_halo: int = 64
    size_multiple: int = 1
    description: str = ""
    """One sentence saying what was loaded: format, weights, head and classes."""
    save_suffixes: tuple[str, ...] = ()
    """File suffixes :meth:`save` writes, the first suggested (empty: it cannot save)."""
    save_format: str = ""
    """What :meth:`save` writes, in words."""

    @property
    def n_classes(self) -> int:
        """Number of output classes, background included."""
        return len(self.class_names)

    @property
    @abstractmethod
    def network(self) -> nn.Module:
        """The whole wrapped network (used for device moves and eval mode)."""

    @property
    @abstractmethod
    def head_module(self) -> nn.Module:
        """The module whose parameters refinement tunes."""

    @abstractmethod
    def features(self, image: np.ndarray) -> Features:
        """Run the frozen trunk on one 2D image.

        Parameters
        ----------
        image : numpy.ndarray
            (Y, X) greyscale or (Y, X, C) RGB, any real dtype; never modified.

        Returns
        -------
        Features
            Tensors [1, F, Y, X] on the model's device, aligned with the image pixels.
        """

    @abstractmethod
    def head(self, features: Features) -> torch.Tensor:
        """Map (a crop or gather of) cached features to class logits.

        Parameters
        ----------
        features : Features
            Tensors [N, F, h, w] sliced consistently from the cached features.

        Returns
        -------
        torch.Tensor
            Logits [N, n_classes, h, w].
        """

    def class_map(self, logits: torch.Tensor) -> torch.Tensor:
        """Decide each pixel's class from the head's logits (default: the argmax).

        Parameters
        ----------
        logits : torch.Tensor
            [N, n_classes, h, w].

        Returns
        -------
        torch.Tensor
            int64 [N, h, w].
        """
        # channels-last makes the reduction contiguous: several times faster than argmax(1)
        return logits.permute(0, 2, 3, 1).contiguous().argmax(-1)

    def pixel_feature_keys(self, features: Features) -> list[str]:
        """Name the cached tensors that say what a pixel looks like (the trust region's space).

        Parameters
        ----------
        features : Features
            Cached tensors [N, F_k, Y, X].

        Returns
        -------
        list of str
            Keys of ``features``; by default all of them.
        """
        return list(features)

    def set_n_layers(self, n_layers: int) -> None:
        """Make the head the network's last ``n_layers`` layers, where the adapter can.

        Called before the trunk runs (the depth decides what is cached). The default keeps
        the head the adapter was made with, so ``RefineConfig.n_layers`` does not apply.

        Parameters
        ----------
        n_layers : int
            Layers to tune, counted from the output.
        """
        del n_layers  # a fixed head

    @abstractmethod
    def add_class(self, name: str, init_from: int) -> None:
        """Grow the head's last layer by one output class.

        Parameters
        ----------
        name : str
            Name of the new class.
        init_from : int
            Index of the existing class whose weights initialise the new channel.
        """

    def save(self, path: Path, metadata: Mapping[str, Any]) -> None:
        """Write the network with its current head so that ``load_model`` reads it back.

        The caller checks ``path`` against :attr:`save_suffixes` first.

        Parameters
        ----------
        path : Path
            Output file.
        metadata : mapping
            JSON-serialisable notes stored with the weights (e.g. what the head was tuned on).

        Raises
        ------
        ValueError
            When this kind of model cannot be saved (the default).
        """
        raise ValueError(f"{self.name}: saving a {type(self).__name__} is not supported")

    def instances(
        self, class_map: np.ndarray, logits: torch.Tensor, features: Features
    ) -> np.ndarray | None:
        """Model-specific instance post-processing (e.g. HoVer-Net's HV watershed).

        Parameters
        ----------
        class_map : numpy.ndarray
            (Y, X) argmax class map of one image.
        logits : torch.Tensor
            [1, C, Y, X] logits behind ``class_map``.
        features : Features
            The cached trunk features of that image.

        Returns
        -------
        numpy.ndarray or None
            Instance labels (0 = background), or None to use the generic distance watershed.
        """
        return None

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters."""
        first = next(self.network.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def to(self, device: torch.device | str) -> SegmentationModel:
        """Move the network to ``device`` and keep it in eval mode.

        Parameters
        ----------
        device : torch.device or str
            Target device.

        Returns
        -------
        SegmentationModel
            ``self``.
        """
        self.network.to(device).eval()
        return self

    def head_state(self) -> HeadState:
        """Snapshot of the head's weights and class names (detached copies).

        Returns
        -------
        HeadState
            A snapshot for :meth:`load_head_state`.
        """
        weights = {k: v.detach().clone() for k, v in self.head_module.state_dict().items()}
        return {"weights": weights, "class_names": list(self.class_names)}

    def load_head_state(self, state: HeadState) -> None:
        """Restore a snapshot taken by :meth:`head_state`, exactly.

        Parameters with a different shape (a class added since the snapshot) are replaced.

        Parameters
        ----------
        state : HeadState
            The snapshot.
        """
        weights = state["weights"]
        for full_name, value in weights.items():
            owner_name, _, attr = full_name.rpartition(".")
            owner = self.head_module.get_submodule(owner_name) if owner_name else self.head_module
            current = getattr(owner, attr)
            if isinstance(current, nn.Parameter):
                if current.shape != value.shape:
                    setattr(owner, attr, nn.Parameter(value.clone().to(current.device)))
                    if hasattr(owner, "out_channels"):
                        owner.out_channels = value.shape[0]
                else:
                    with torch.no_grad():
                        current.copy_(value)
            elif isinstance(current, torch.Tensor):
                owner._buffers[attr] = value.clone().to(current.device)
        self.class_names = list(state["class_names"])


class BatchedFeatures:
    """``features`` for adapters that prepare images in batches (their ``features_batch``)."""

    def features(self, image: np.ndarray, *, normalised: bool = False) -> Features:
        """Run the frozen trunk on one 2D image: ``features_batch`` of a batch of one.

        Parameters
        ----------
        image : numpy.ndarray
            (Y, X) or (Y, X, C); not modified.
        normalised : bool
            True when ``image`` has already been through ``normalise_image``.

        Returns
        -------
        Features
            As ``features_batch`` returns them, each tensor [1, F, Y, X].
        """
        return self.features_batch([image], normalised=normalised)  # type: ignore[attr-defined]
