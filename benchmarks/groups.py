"""Groups of benchmark images: per source, per DSB modality, and all.

Kept apart from ``evaluate.py`` (which needs torch and the package) so that the report can
find an image's groups when it re-renders a stored ``results.json``.
"""

from __future__ import annotations

MODALITY_SOURCES = ("dsb2018",)
"""Sources whose sample ids start with a modality (``fluo_...``, ``histo_...``, ``bfgray_...``):
each modality is a group of its own, ``<source>/<modality>``."""

ALL = "all"
"""The group of every image."""


def image_groups(image: dict) -> list[str]:
    """Name the groups an image record belongs to: its source, its modality, ``all``.

    Parameters
    ----------
    image : dict
        A per-image record (``"source"``, ``"sample"`` = ``"<source>/<sample id>"``).

    Returns
    -------
    list of str
        ``[source, "all"]``, with ``"<source>/<modality>"`` between them for the sources of
        :data:`MODALITY_SOURCES` (the modality is the sample id's prefix before ``_``).
    """
    source = image["source"]
    groups = [source]
    sample_id = image["sample"].split("/", 1)[-1]
    if source in MODALITY_SOURCES and "_" in sample_id:
        groups.append(f"{source}/{sample_id.split('_', 1)[0]}")
    return [*groups, ALL]


def group_names(images: list[dict]) -> list[str]:
    """Return every group of a run in report order.

    Parameters
    ----------
    images : list of dict
        Per-image records.

    Returns
    -------
    list of str
        Each source followed by its modalities (sorted), then ``all``.
    """
    found = {g for im in images for g in image_groups(im)} - {ALL}
    order: list[str] = []
    for source in sorted(g for g in found if "/" not in g):
        order += [source, *sorted(g for g in found if g.startswith(source + "/"))]
    return [*order, ALL]


def is_source(group: str) -> bool:
    """Say whether a group name is a source (not a modality, not ``all``)."""
    return group != ALL and "/" not in group
