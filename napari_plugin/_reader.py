"""napari readers: DICOM series folders, NIfTI and other volumes, through ``medseg.io``.

A DICOM folder that holds several image series opens **every series as its own layer**, largest
first (each with its own geometry, so series of one study overlap where they overlap in the
patient); a folder with no DICOM file at its top level is searched recursively (a study folder
with one sub-folder per series). A single ``.dcm`` file opens the whole series it belongs to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info
from pydicom.misc import is_dicom

from medseg.errors import ImageReadError
from medseg.io.image import MedImage
from napari_plugin._geometry import image_layer_data

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | list[str]], list[LayerData]]

#: File endings the volume reader accepts (matched case-insensitively by napari).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: 2D image files (microscopy, photographs of slides): rows x columns as the file stores them,
#: scaled by the pixel size of an ImageJ/OME TIFF.
IMAGE_2D_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: How many files a folder probe looks at before deciding it holds no DICOM.
PROBE_FILES = 64


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """npe2 reader hook: the medseg reader if every path is a volume, DICOM file or DICOM folder.

    Cheap by design (napari calls it on every open): a folder is accepted when one of its first
    :data:`PROBE_FILES` files (searched two levels deep) has the DICOM preamble.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(_is_readable(Path(p)) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read each path into napari image layers with geometry and ``ImageMeta`` metadata.

    Raises:
        ImageReadError: A path cannot be read (the message names it and the problem).
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        for name, image in _read_path(Path(p)):
            layers.extend(image_layer_data(image, name=name))
    return layers


def _is_readable(path: Path) -> bool:
    if path.is_dir():
        return any(True for _ in _dicom_files(path, limit=1))
    name = path.name.lower()
    return name.endswith(VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES) or (name.endswith(".dcm")
                                                                  and path.is_file())


def _dicom_files(folder: Path, *, limit: int) -> Iterator[Path]:
    """DICOM files among the first ``PROBE_FILES`` files found up to two levels below ``folder``."""
    seen = 0
    for depth_glob in ("*", "*/*"):
        for p in sorted(folder.glob(depth_glob)):
            if seen >= PROBE_FILES or limit <= 0:
                return
            if p.is_file() and not p.name.startswith("."):
                seen += 1
                if is_dicom(p):
                    limit -= 1
                    yield p


def _read_path(path: Path) -> list[tuple[str, MedImage]]:
    from medseg.io import read_image

    if path.is_dir():
        return _read_dicom_folder(path)
    if path.name.lower().endswith(".dcm"):
        return [_read_series_of_file(path)]
    image = read_image(path)
    if path.name.lower().endswith(IMAGE_2D_SUFFIXES):
        image = grey_if_equal_channels(image)
    return [(_volume_name(path), image)]


def grey_if_equal_channels(image: MedImage) -> MedImage:
    """One grey channel for an RGB(A) image whose colour channels are equal everywhere (how
    fluorescence images are often saved) and whose alpha, if any, is constant; else as is."""
    import numpy as np

    a = image.array
    if a.shape[0] not in (3, 4):
        return image
    equal = np.array_equal(a[0], a[1]) and np.array_equal(a[0], a[2])
    alpha_flat = a.shape[0] == 3 or bool((a[3] == a[3].flat[0]).all())
    return image.with_array(np.ascontiguousarray(a[:1])) if equal and alpha_flat else image


def _read_dicom_folder(folder: Path) -> list[tuple[str, MedImage]]:
    from medseg.io import list_dicom_series, read_image

    series = list_dicom_series(folder, images_only=True) or list_dicom_series(
        folder, recursive=True, images_only=True
    )
    if not series:
        raise ImageReadError(f"{folder}: no DICOM image series found (searched sub-folders too)")
    if len(series) > 1:
        show_info(f"{folder.name}: {len(series)} DICOM image series, each opened as its own "
                  f"layer (largest first): " + "; ".join(s.summary() for s in series))
    names = [_series_name(info) for info in series]
    out = []
    for info, name in zip(series, names, strict=True):
        unique = name if names.count(name) == 1 else f"{name} [{info.series_uid[-8:]}]"
        out.append((unique, read_image(info.folder, series_uid=info.series_uid)))
    return out


def _read_series_of_file(path: Path) -> tuple[str, MedImage]:
    from medseg.io import list_dicom_series, read_image

    target = path.resolve()
    for info in list_dicom_series(path.parent, images_only=True):
        if target in {f.resolve() for f in info.files}:
            return _series_name(info), read_image(info.folder, series_uid=info.series_uid)
    raise ImageReadError(f"{path}: not part of a DICOM image series in {path.parent}")


def _series_name(info: Any) -> str:
    return info.description or f"{info.folder.name} {info.modality}".strip()


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
