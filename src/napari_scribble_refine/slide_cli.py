"""``scribble-refine slide``: a whole slide, read lazily, refined and written tile by tile.

The image (a TIFF, zarr or OME-Zarr) is never read whole: a
:class:`~napari_scribble_refine.core.slide.SlideSession` refines on the scribbles' region
(``--scribbles``, a TIFF or zarr of the image's size, read lazily too) and writes the class
map of the whole image to a zarr folder tile by tile; a run that stopped resumes where it
stopped when started again with the same model and scribbles.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``slide`` sub-command to ``scribble-refine``'s sub-parsers.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The sub-parsers.
    """
    p = sub.add_parser("slide", help="a whole slide, lazily: refine and write the result to zarr")
    p.add_argument("image", help="a TIFF file, zarr or OME-Zarr folder; read tile by tile")
    p.add_argument("--out", required=True, help="zarr folder for the class map (resumable)")
    p.add_argument(
        "--model", default=None, help="built-in name or a model file (default: by image)"
    )
    p.add_argument("--allow-code", action="store_true", help="allow TorchScript model files")
    p.add_argument(
        "--scribbles",
        default=None,
        help="scribbles of the image's size (TIFF or zarr: 0 none, 1 background, c+1 class c)",
    )
    p.add_argument(
        "--region",
        default=None,
        metavar="Y0:Y1,X0:X1",
        help="the region to refine on with the scribbles there (default: around them)",
    )
    p.add_argument("--save-model", default=None, metavar="PATH", help="save the refined model")
    p.add_argument("--overwrite", action="store_true", help="replace a result of another model")
    p.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on a terminal")


def _region(text: str | None, ndim: int) -> tuple[slice, ...] | None:
    if text is None:
        return None
    try:
        parts = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
        region = tuple(slice(a, b) for a, b in parts)
    except ValueError:
        region = ()
    if len(region) != ndim:
        raise ValueError(
            f"--region {text}: give {ndim} ranges start:stop separated by commas, "
            "such as 2048:4096,0:2048"
        )
    return region


def run(
    args: argparse.Namespace, counter: Callable[[str, str], Callable[[int, int], None]]
) -> None:
    """Run ``scribble-refine slide``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.
    counter : callable
        ``counter(description, unit)`` returns a ``progress(done, total)`` bar.
    """
    from .core import RefineConfig, load_model
    from .core.lazy_image import LazyImage, open_array
    from .core.models.registry import default_model
    from .core.models.saving import check_target
    from .core.slide import SlideSession

    info = LazyImage(args.image, rgb=args.rgb).info
    region = _region(args.region, len(info.spatial_shape))
    if region is not None and args.scribbles is None:
        raise ValueError("--region: it says where to refine; give --scribbles too")
    name = args.model or default_model(info.is_rgb)
    model = load_model(name, allow_code=args.allow_code)
    print(model.description)
    session = SlideSession(model, args.image, RefineConfig(device=args.device), rgb=args.rgb)
    if args.save_model:
        check_target(session.model, args.save_model, overwrite=True)
    if args.scribbles is not None:
        scribbles = open_array(args.scribbles)
        result = session.run(scribbles, region=region)
        box = ", ".join(f"{s.start}:{s.stop}" for s in session.working_region or ())
        print(f"refined on the region [{box}]: {result.message}")
    target = session.write_prediction(
        args.out, overwrite=args.overwrite, progress=counter("writing tiles", "tile")
    )
    print(f"wrote the class map {target.shape} to {args.out} (classes {session.class_names})")
    if args.save_model:
        print(f"saved the refined model to {session.save_model(args.save_model)}")
