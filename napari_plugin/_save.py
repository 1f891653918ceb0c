"""Save a (corrected) medseg labels layer as NIfTI, DICOM SEG or (2D) TIFF on its source grid.

The grid always comes from the ``ImageMeta`` stored on the layer, never from the layer's
``scale``/``translate``: a user who rescales a layer for display cannot change what is saved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ImageWriteError
from medseg.io.image import MedImage
from napari_plugin._geometry import SHAPE_KEY, labels_to_medimage, meta_from_layer
from napari_plugin._layers import (
    INSTANCES_KEY,
    MODEL_KEY,
    stored_label_colors,
    stored_label_names,
)
from napari_plugin._logic import label_colors_for, output_format

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "medseg"


def labels_from_layer(data: Any, metadata: Mapping[str, Any], *, layer_name: str) -> MedImage:
    """A labels layer's array back on its stored medseg grid, with its label names."""
    meta = meta_from_layer(dict(metadata), layer_name=layer_name)
    labels = labels_to_medimage(
        data, meta, expected_shape=metadata.get(SHAPE_KEY), layer_name=layer_name
    )
    names = stored_label_names(metadata)
    return labels.with_array(labels.array, label_names=names) if names else labels


def save_labels(
    path: str | Path, data: Any, metadata: Mapping[str, Any], *, layer_name: str
) -> Path:
    """Write a labels layer to ``.nii``/``.nii.gz`` (NIfTI) or ``.dcm`` (DICOM SEG).

    Args:
        path: Output file; the extension picks the format.
        data: napari labels data ``(k, j, i)``.
        metadata: The layer's metadata (must hold the medseg grid).
        layer_name: For error messages.

    Returns:
        The written path.

    Raises:
        ImageWriteError: Unknown extension, or DICOM SEG for an image not read from DICOM.
        GeometryError: The layer has no medseg grid or does not fit it.
    """
    path = Path(path)
    fmt = output_format(path)
    labels = labels_from_layer(data, metadata, layer_name=layer_name)
    if fmt == "nifti":
        from medseg.io import write_nifti

        written = write_nifti(labels, path)
    elif fmt == "image2d":
        from medseg.io.image2d import write_label_image_2d

        if labels.meta.ndim != 2:
            raise ImageWriteError(f"{path}: layer {layer_name!r} is 3D; a TIFF/PNG label image "
                                  "holds a 2D result (save it as .nii.gz or .dcm)")
        if metadata.get(INSTANCES_KEY):  # object ids are uint16/uint32, whatever their count
            labels = labels.with_array(labels.array.astype(np.uint32 if labels.array.max(
                initial=0) > np.iinfo(np.uint16).max else np.uint16))
        written = write_label_image_2d(labels, path)
    else:
        written = _write_seg(labels, metadata, path, layer_name=layer_name)
    logger.info("saved labels layer %r to %s", layer_name, written)
    return Path(written)


def _write_seg(
    labels: MedImage, metadata: Mapping[str, Any], path: Path, *, layer_name: str
) -> Path:
    from medseg.io import read_image, write_dicom_seg

    prov = labels.meta.provenance
    if prov.format != "dicom" or not prov.path:
        raise ImageWriteError(
            f"{path}: layer {layer_name!r} was not made on a DICOM series, so it cannot be saved "
            "as DICOM SEG (which references its source images); save it as .nii.gz instead"
        )
    # write_dicom_seg checks the grid against the source and references its instances, so the
    # source series is read again from where the image came from (it may have been closed).
    source = read_image(prov.path, series_uid=prov.series_instance_uid or None)
    present = {int(v) for v in np.unique(labels.array) if v != 0}
    names = {**{v: f"label {v}" for v in present}, **labels.meta.label_names}  # painted extras
    colors = label_colors_for(sorted(names), stored_label_colors(metadata))
    model = metadata.get(MODEL_KEY)
    return Path(
        write_dicom_seg(
            labels,
            source,
            path,
            label_names=names,
            label_colors=colors,
            algorithm_name=f"{ALGORITHM_NAME} {model}" if model else ALGORITHM_NAME,
            algorithm_version=_medseg_version(),
        )
    )


def _medseg_version() -> str:
    import medseg

    return str(medseg.__version__)


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer hook (File > Save Selected Layers for a labels layer)."""
    name = str(attributes.get("name") or "labels")
    return [str(save_labels(path, data, attributes.get("metadata") or {}, layer_name=name))]
