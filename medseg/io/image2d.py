"""2D images (PNG, TIFF, JPEG, BMP): a pixel grid with identity geometry.

Pixel files carry no physical geometry, so the grid is unit spacing at the origin. Axis 0 is
the image's x (columns) and axis 1 its y (rows), the same ``(i, j)`` order as every other
medseg image, so a PNG and a DICOM slice line up. RGB(A) pixels become channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, ImageReadError
from medseg.io.image import ImageMeta, MedImage, Provenance
from medseg.io.validation import check_finite, require_nonempty_file

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")


def is_2d_path(path: str | Path) -> bool:
    """True for PNG/JPEG/BMP/TIFF file names (case-insensitive)."""
    return str(path).lower().endswith(PIL_SUFFIXES + TIFF_SUFFIXES)


def _load_pixels(path: Path) -> np.ndarray:
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "PA"):  # palette images: decode to RGB(A) values
            im = im.convert("RGBA" if im.mode == "PA" else "RGB")
        return np.asarray(im)


def read_image_2d(path: str | Path) -> MedImage:
    """Read a 2D greyscale or colour image as ``(C, x, y)`` with identity geometry.

    Greyscale gives one channel; RGB/RGBA give 3/4 channels. A multi-page TIFF stack is read as
    a 3D ``(1, x, y, z)`` image, still with unit spacing.

    Raises:
        ImageReadError: Missing, empty or undecodable file; NaN/inf pixels.
        GeometryError: Shapes that are neither 2D (optionally with colour) nor a 3D stack.
    """
    path = require_nonempty_file(path)
    try:
        pixels = _load_pixels(path)
    except Exception as exc:  # PIL/tifffile raise many types on damaged files
        raise ImageReadError(f"{path} cannot be decoded as an image: {exc}") from exc
    fmt = "tiff" if path.suffix.lower() in TIFF_SUFFIXES else path.suffix.lower().lstrip(".")
    prov = Provenance(path=str(path), format=fmt)
    if pixels.ndim == 2:  # (rows, cols) -> (1, x, y)
        arr, ndim = pixels.T[None], 2
    elif pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # (rows, cols, c) -> (c, x, y)
        arr, ndim = np.transpose(pixels, (2, 1, 0)), 2
    elif pixels.ndim == 3:  # a stack (z, rows, cols) -> (1, x, y, z)
        arr, ndim = np.transpose(pixels, (2, 1, 0))[None], 3
    else:
        raise GeometryError(f"{path} has pixel array shape {pixels.shape}; expected a 2D image, "
                            "an RGB(A) image or a 3D stack")
    arr = np.ascontiguousarray(arr)
    check_finite(arr, source=str(path))
    return MedImage(arr, ImageMeta.identity(ndim, provenance=prov))
