"""Saving a session's tuned model: the plugin's own format and a bioimage.io package.

:class:`SessionSaving` holds :class:`~.session.RefineSession`'s ``save_model`` and
``export_bioimageio`` (the session mixes it in).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .models.saving import check_path, check_target, tuning_notes

if TYPE_CHECKING:
    from .images import ImageInfo
    from .models.base import SegmentationModel

__all__ = ["SessionSaving"]


class SessionSaving:
    """Save and export the tuned model of a session (mixed into ``RefineSession``).

    It uses the session's ``model``, ``image``, ``image_info``, ``spatial_shape``,
    ``history_labels``, ``history_position`` and ``_check_open``.
    """

    model: SegmentationModel
    image_info: ImageInfo

    def save_model(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the network with its head as tuned now, for ``load_model`` to read back.

        The format follows the model (:attr:`SegmentationModel.save_format`): the plugin's
        ``.safetensors`` for HoVer-Net models, TorchScript for TorchScript files, a
        ``.safetensors`` state dict for other ``nn.Module`` networks. The file holds the
        tuned network, which predicts as this session's head does; the session's result also
        applies the scribbles, the trust region and the edge-aware smoothing on top.

        Parameters
        ----------
        path : str or os.PathLike
            Output file, with a suffix the format takes.
        overwrite : bool
            Replace an existing file.

        Returns
        -------
        Path
            The file written.

        Raises
        ------
        ValueError
            For a model that cannot be saved, a suffix the format does not take, a missing
            folder or an existing file without ``overwrite``.
        """
        self._check_open()
        model = self.model
        target = check_target(model, path, overwrite)
        model.save(target, {"adapted": self._adapted()})
        return target

    def _adapted(self) -> dict[str, object]:
        """Return what a saved or exported model records about its tuning."""
        steps = self.history_labels[1 : self.history_position + 1]
        return tuning_notes(self.model.name, self.spatial_shape, steps)

    def export_bioimageio(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        license: str | None = None,  # noqa: A002 - the rdf's field name
        authors: list[str] | None = None,
    ) -> Path:
        """Write the network with its head as tuned now as a bioimage.io package (``.zip``).

        Built-in (same-padded HoVer-Net) models only, for now. The package runs in other
        bioimage.io tools and ``load_model(path, allow_code=True)`` reads it back; see
        :mod:`~napari_scribble_refine.core.models.bioimageio_export` for what it holds.

        Parameters
        ----------
        path : str or os.PathLike
            Output ``.zip``.
        overwrite : bool
            Replace an existing file.
        license : str, optional
            SPDX identifier (default BSD-3-Clause; required when the weights carry a
            condition without one, such as ``hovernet-he``'s research-use condition).
        authors : list of str, optional
            Author names for the package.

        Returns
        -------
        Path
            The package written.

        Raises
        ------
        ValueError
            For a model that cannot be exported, a bad path, or a missing licence.
        ImportError
            Without ``bioimageio.spec`` (the extra ``bioimageio``).
        """
        from .models.bioimageio_export import export_hovernet_package
        from .models.hovernet_adapter import HoVerNetModel

        self._check_open()
        if not isinstance(self.model, HoVerNetModel):
            raise ValueError(
                f"{self.model.name}: export_bioimageio writes HoVer-Net models only yet; "
                "save_model writes this one in its own format"
            )
        target = check_path(path, (".zip",), "a bioimage.io package", overwrite)
        image = self.image if not self.image_info.is_3d else self.image[0]
        return export_hovernet_package(
            self.model, image, target, self._adapted(), licence=license, authors=authors
        )
