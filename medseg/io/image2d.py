"""2D images (PNG, TIFF, JPEG, BMP): a pixel grid at the origin.

Axis 0 is the image's x (columns) and axis 1 its y (rows), the same ``(i, j)`` order as every
other medseg image, so a PNG and a DICOM slice line up; writers transpose back, so a label
image written for an image has the image's rows and columns when both are read by tifffile or
PIL. RGB(A) pixels become channels.

Pixel size: an ImageJ TIFF (``unit`` micron and the X/Y resolution tags) or an OME-TIFF
(``PhysicalSizeX/Y``) gives the spacing in micrometres (``Provenance.spacing_unit = "um"``);
every other file has unit spacing marked ``"px"`` (unknown), so areas are reported in pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import GeometryError, ImageReadError, ImageWriteError
from medseg.io.image import ImageMeta, MedImage, Provenance
from medseg.io.validation import check_finite, require_nonempty_file

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")


def is_2d_path(path: str | Path) -> bool:
    """True for PNG/JPEG/BMP/TIFF file names (case-insensitive)."""
    return str(path).lower().endswith(PIL_SUFFIXES + TIFF_SUFFIXES)


#: Length units of ImageJ/OME metadata, in micrometres (micro sign, Greek mu, escaped form).
_MICRONS = {"micron": 1.0, "microns": 1.0, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0,
            "\\u00B5m": 1.0, "nm": 1e-3, "mm": 1e3}


def _pixel_size_um(tif: Any) -> tuple[float, float] | None:
    """``(x, y)`` pixel size in micrometres from an open ``tifffile.TiffFile``'s OME-XML or
    ImageJ metadata, else ``None`` (metadata is optional: one we cannot parse gives none)."""
    try:
        if tif.is_ome and tif.ome_metadata:
            import re

            def size(axis: str) -> float | None:
                m = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', tif.ome_metadata)
                unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', tif.ome_metadata)
                factor = _MICRONS.get(unit.group(1)) if unit else 1.0
                return float(m.group(1)) * factor if m and factor else None

            x, y = size("X"), size("Y")
            if x and y and x > 0 and y > 0:
                return x, y
        meta = tif.imagej_metadata or {}
        factor = _MICRONS.get(str(meta.get("unit", "")).strip())
        page = tif.pages[0]
        xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
        if factor and xres and yres:
            (xn, xd), (yn, yd) = xres.value, yres.value
            if xn > 0 and yn > 0:
                return xd / xn * factor, yd / yn * factor
    except Exception:  # metadata is optional: a file we cannot parse has no pixel size
        return None
    return None


def tiff_pixel_size_um(path: str | Path) -> tuple[float, float] | None:
    """``(x, y)`` pixel size in micrometres from OME-XML or ImageJ metadata, else ``None``."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _pixel_size_um(tif)
    except Exception:  # not a readable TIFF: no pixel size
        return None


def _decode(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The pixels of an image file and, for a TIFF, its pixel size in micrometres (read from
    the one open file).

    Raises:
        ImageReadError: The file cannot be decoded.
    """
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return np.asarray(tif.asarray()), _pixel_size_um(tif)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("P", "PA"):  # palette images: decode to RGB(A) values
                im = im.convert("RGBA" if im.mode == "PA" else "RGB")
            return np.asarray(im), None
    except Exception as exc:  # PIL/tifffile raise many types on damaged files
        raise ImageReadError(f"{path} cannot be decoded as an image: {exc}") from exc


def read_image_2d(path: str | Path) -> MedImage:
    """Read a 2D greyscale or colour image as ``(C, x, y)`` with identity geometry.

    Greyscale gives one channel; RGB/RGBA give 3/4 channels. A multi-page TIFF stack is read as
    a 3D ``(1, x, y, z)`` image, still with unit spacing.

    Raises:
        ImageReadError: Missing, empty or undecodable file; NaN/inf pixels.
        GeometryError: Shapes that are neither 2D (optionally with colour) nor a 3D stack.
    """
    path = require_nonempty_file(path)
    pixels, pixel = _decode(path)
    fmt = "tiff" if path.suffix.lower() in TIFF_SUFFIXES else path.suffix.lower().lstrip(".")
    prov = Provenance(path=str(path), format=fmt, spacing_unit="um" if pixel else "px")
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
    meta = ImageMeta.identity(ndim, provenance=prov)
    if pixel and ndim == 2:
        meta = meta.replace(spacing=(float(pixel[0]), float(pixel[1])))
    return MedImage(arr, meta)


#: dtypes an ImageJ TIFF holds (grey; colour only as uint8 RGB).
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


def pixel_size_um(meta: ImageMeta) -> tuple[float, float] | None:
    """The ``(x, y)`` pixel size in micrometres a 2D file should carry: the spacing of an image
    read with a pixel size (``um``), a spacing in mm converted, ``None`` for unit pixels."""
    unit = meta.provenance.spacing_unit
    sx, sy = (float(v) for v in meta.spacing[:2])
    if unit == "px" or (unit != "um" and (sx, sy) == (1.0, 1.0)):
        return None
    return (sx, sy) if unit == "um" else (sx * 1000.0, sy * 1000.0)


def _write_tiff(path: Path, pixels: np.ndarray, pixel_um: tuple[float, float] | None) -> None:
    """Write ``(rows, cols[, 3|4])`` pixels as a TIFF, with the pixel size as ImageJ tags where
    ImageJ holds the dtype (as Fiji reads it), else as OME-XML; both are what
    :func:`read_image_2d` reads back."""
    import tifffile

    colour = pixels.ndim == 3
    photometric = "rgb" if colour else "minisblack"
    if pixel_um is None:
        tifffile.imwrite(path, pixels, photometric=photometric, compression="zlib")
        return
    sx, sy = pixel_um
    if pixels.dtype in _IMAGEJ_DTYPES and (not colour or (pixels.dtype == np.uint8
                                                          and pixels.shape[-1] == 3)):
        tifffile.imwrite(path, pixels, imagej=True, photometric=photometric,
                         resolution=(1.0 / sx, 1.0 / sy), metadata={"unit": "um"})
        return
    tifffile.imwrite(path, pixels, ome=True, photometric=photometric, compression="zlib",
                     metadata={"axes": "YXS" if colour else "YX",
                               "PhysicalSizeX": sx, "PhysicalSizeXUnit": "\u00b5m",
                               "PhysicalSizeY": sy, "PhysicalSizeYUnit": "\u00b5m"})


def write_image_2d(image: MedImage, path: str | Path) -> Path:
    """Write a 2D grey (one channel) or colour (3 or 4 channels) image as PNG or TIFF, with the
    rows and columns :func:`read_image_2d` reads back, atomically.

    A TIFF carries the pixel size (:func:`pixel_size_um`); a PNG holds uint8 (grey, RGB, RGBA)
    or uint16 grey pixels without a pixel size.

    Raises:
        GeometryError: Not a 2D image of 1, 3 or 4 channels.
        ImageWriteError: A PNG asked for pixels or a pixel size it cannot hold.
    """
    from medseg.io.atomic import atomic_path

    path = Path(path)
    if image.meta.ndim != 2 or image.num_channels not in (1, 3, 4):
        raise GeometryError(f"a 2D image file holds one grey or 3/4 colour channels on two "
                            f"axes, got shape {image.array.shape}")
    array = np.asarray(image.array)
    pixels = np.ascontiguousarray(array[0].T if image.num_channels == 1
                                  else np.transpose(array, (2, 1, 0)))
    if pixels.dtype == np.float64:
        pixels = pixels.astype(np.float32)
    pixel_um = pixel_size_um(image.meta)
    tiff = path.suffix.lower() in TIFF_SUFFIXES
    if not tiff and (pixel_um is not None or not (
            pixels.dtype == np.uint8 or (pixels.dtype == np.uint16 and pixels.ndim == 2))):
        raise ImageWriteError(f"{path}: a PNG holds uint8 or 16-bit grey pixels without a "
                              f"pixel size (this image: {pixels.dtype}, pixel size "
                              f"{pixel_um or 'none'}); write a .tif")
    with atomic_path(path) as tmp:
        if tiff:
            _write_tiff(tmp, pixels, pixel_um)
        else:
            from PIL import Image

            Image.fromarray(pixels).save(tmp, format="PNG")
    return path


def write_label_image_2d(labels: MedImage, path: str | Path) -> Path:
    """Write a one-channel 2D label map ``(1, x, y)`` as a TIFF (or PNG) with the source
    image's rows and columns (the array transposed back to ``(row, column)``).

    Instance ids keep their values (uint16, or uint32 above 65535 objects); a pixel size in
    micrometres is carried over (ImageJ resolution tags, OME-XML for uint32), so Fiji and
    napari show the scale. Written atomically.

    Raises:
        GeometryError: Not a one-channel 2D map.
    """
    from medseg.io.atomic import atomic_path

    path = Path(path)
    if labels.meta.ndim != 2 or labels.num_channels != 1:
        raise GeometryError(f"a 2D label image needs one channel and two axes, got shape "
                            f"{labels.array.shape}")
    values = np.asarray(labels.array[0])
    top = int(values.max(initial=0))
    dtype = np.uint8 if top < 256 and values.dtype == np.uint8 else \
        np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32  # ids keep 16/32 bits
    rows_cols = np.ascontiguousarray(values.T.astype(dtype, copy=False))
    with atomic_path(path) as tmp:
        if path.suffix.lower() in TIFF_SUFFIXES:
            _write_tiff(tmp, rows_cols, pixel_size_um(labels.meta)
                        if labels.meta.provenance.spacing_unit == "um" else None)
        else:
            from PIL import Image

            if dtype == np.uint32:
                raise GeometryError(f"{path}: PNG holds at most 65535 objects; write a TIFF")
            Image.fromarray(rows_cols).save(tmp, format="PNG")
    return path


def read_slice_stack(paths: list[Path] | tuple[Path, ...]) -> MedImage:
    """Stack numbered 2D slices (in the order given) into one volume ``(C, row, column, slice)``.

    The array axes are the slice files' own rows and columns followed by the slice index, with
    unit spacing: exactly what ``np.stack([imread(f) for f in files], axis=-1)`` saved as a NIfTI
    file with an identity affine gives, which is how slice datasets without geometry (LGG FLAIR)
    are handed over as volumes. Colour slices become channels.

    Raises:
        ImageReadError: A slice is missing or undecodable.
        GeometryError: Slices of different shapes, or no slices.
    """
    if not paths:
        raise GeometryError("no slices to stack")
    planes = []
    for p in paths:
        path = require_nonempty_file(p)
        pixels, _ = _decode(path)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.ndim != 3 or (planes and pixels.shape != planes[0].shape):
            raise GeometryError(f"{path}: slice shape {pixels.shape} differs from the first "
                                f"slice's {planes[0].shape if planes else '(none)'}")
        planes.append(pixels)
    arr = np.ascontiguousarray(np.stack(planes, axis=-1).transpose(2, 0, 1, 3))
    check_finite(arr, source=str(paths[0]))
    prov = Provenance(path=str(Path(paths[0]).parent), format="slices")
    return MedImage(arr, ImageMeta.identity(3, provenance=prov))
