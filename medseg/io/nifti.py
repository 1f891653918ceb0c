"""NIfTI (.nii, .nii.gz) reading and writing with nibabel.

nibabel's affine is RAS; :meth:`ImageMeta.from_affine` / :meth:`ImageMeta.affine_ras` convert
to and from medseg's LPS geometry, so nothing else in medseg sees RAS.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.errors import GeometryError, ImageReadError, ImageWriteError, describe_exception
from medseg.io.atomic import atomic_path
from medseg.io.image import ImageMeta, MedImage, Provenance
from medseg.io.validation import (
    check_finite,
    check_voxel_count,
    require_nonempty_file,
)

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` names (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_header(path: Path, img: nib.Nifti1Image) -> None:
    """Refuse, from the header alone (before any voxel is decompressed), what would otherwise
    be read wrongly or at any cost: complex or RGB voxels, more voxels than
    :func:`~medseg.io.validation.max_voxels`, a spacing of 0/NaN with no sform or qform to
    replace it, and an affine that is singular or not finite."""
    dtype = img.get_data_dtype()
    if dtype.names is not None:
        raise ImageReadError(f"{path} holds RGB/structured voxels ({dtype.names}); medseg reads "
                             "grey-level NIfTI (split the colour channels into a 4D file)")
    if dtype.kind == "c":
        raise ImageReadError(f"{path} holds complex-valued voxels ({dtype}); medseg reads "
                             "real-valued images (take the magnitude first)")
    shape = tuple(int(n) for n in img.shape)
    check_voxel_count(shape, source=str(path))
    header = img.header
    ndim = min(len(shape), 3)
    if not int(header["sform_code"]) and not int(header["qform_code"]):
        # nibabel's checked header has already turned a 0 voxel size into 1: read it as stored
        with nib.openers.ImageOpener(str(path)) as f:
            raw = type(header).from_fileobj(f, check=False)
        zooms = np.asarray(raw["pixdim"][1:ndim + 1], dtype=np.float64)
        if not (np.isfinite(zooms).all() and (zooms > 0).all()):
            raise GeometryError(f"{path} has voxel sizes {zooms.tolist()} and no sform or qform: "
                                "its geometry is unknown")
    linear = np.asarray(img.affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(linear).all() or not np.linalg.norm(linear, axis=0).all() \
            or abs(np.linalg.det(linear)) < 1e-12 * max(1.0, float(np.abs(linear).max())) ** 3:
        raise GeometryError(f"{path} has a singular or non-finite affine "
                            f"{np.round(linear, 4).tolist()}: its voxels have no place in space")


def _fast_gunzip() -> Any | None:
    """``isal.igzip`` (Intel ISA-L, SIMD on any x86-64 with SSE4/AVX2) when installed: it
    inflates a ``.nii.gz`` about twice as fast as zlib, which one large CT's read is mostly
    made of (``benchmarks/results/resample_back.txt``). Optional (``medseg[fast-io]``)."""
    try:
        from isal import igzip
    except ImportError:
        return None
    return igzip


def _load(path: Path) -> nib.spatialimages.SpatialImage:
    """nibabel's image of ``path``: a ``.nii.gz`` inflated in memory by ISA-L when it is
    installed (the same bytes as zlib's: gzip is lossless and checksummed), else nibabel's own
    loader (header now, voxels read from the file later)."""
    igzip = _fast_gunzip()
    if igzip is None or path.suffix.lower() != ".gz":
        return nib.load(str(path))
    raw = igzip.decompress(path.read_bytes())
    sizeof_hdr = int.from_bytes(raw[:4], "little")
    if sizeof_hdr not in (348, 540):  # big-endian header
        sizeof_hdr = int.from_bytes(raw[:4], "big")
    kind = {348: nib.Nifti1Image, 540: nib.Nifti2Image}.get(sizeof_hdr)
    if kind is None:  # not NIfTI at all (Analyze, MGH...): let nibabel tell
        return nib.load(str(path))
    holder = nib.FileHolder(fileobj=io.BytesIO(raw))
    return kind.from_file_map({"header": holder, "image": holder})


def read_nifti(path: str | Path, *, allow_channels: bool = False) -> MedImage:
    """Read a NIfTI file as a channel-first image.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        allow_channels: Accept a 4D file and read its 4th axis as channels (the MSD convention
            for multi-modal images). Otherwise a 4D file with more than one volume is an error.
            Trailing singleton axes are always dropped.

    Returns:
        ``(C, i, j, k)`` image (``(C, i, j)`` for a 2D file) in the file's stored dtype with
        scl_slope/scl_inter applied; geometry from nibabel's affine (sform if set, else qform).
        The array keeps the file's memory layout (first axis fastest, as NIfTI stores it):
        reordering a large volume to C order costs more than decompressing it.

    Raises:
        ImageReadError: Missing, empty, truncated or unreadable file; NaN/inf voxels.
        GeometryError: 4D data where 3D is expected, or more than 4 axes.
    """
    path = require_nonempty_file(path)
    try:
        img = _load(path)
    except Exception as exc:  # nibabel/gzip/zlib raise many types on damaged files
        raise ImageReadError(f"{path} cannot be read as NIfTI (truncated or corrupt?): "
                             f"{describe_exception(exc)}") from exc
    _check_header(path, img)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ImageReadError(f"{path} cannot be read as NIfTI (truncated or corrupt?): "
                             f"{describe_exception(exc)}") from exc
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 5 and data.shape[3] == 1:  # ITK vector images: (x, y, z, 1, c)
        data = data[:, :, :, 0, :]
    if data.ndim == 4:
        if not allow_channels:
            raise GeometryError(
                f"{path} is 4D (shape {shape}) but a single 3D volume is expected; split it "
                "into 3D files, or read it with allow_channels=True to use the 4th axis as channels"
            )
        data = np.moveaxis(data, 3, 0)
    elif data.ndim in (2, 3):
        data = data[None]
    else:
        raise GeometryError(f"{path} has {len(shape)} axes (shape {shape}, {data.ndim} after "
                            "dropping singleton axes); medseg reads 2D, 3D or 4D (channels) NIfTI")
    check_finite(data, source=str(path))
    descrip = bytes(np.asarray(img.header["descrip"]).tobytes()).split(b"\0")[0]
    meta = ImageMeta.from_affine(
        img.affine, ras=True,
        provenance=Provenance(path=str(path), format="nifti",
                              series_description=descrip.decode("ascii", "replace").strip()
                              or None),
    )
    if data.ndim == 3:  # a 2D file still has a 3D affine: keep the in-plane part
        meta = ImageMeta(spacing=meta.spacing[:2], origin=meta.origin[:2],
                         direction=tuple(r[:2] for r in meta.direction[:2]),
                         provenance=meta.provenance)
    return MedImage(data, meta)


def _output_dtype(image: MedImage, dtype: str | np.dtype | None) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    arr = image.array
    if arr.dtype == bool:
        return np.dtype(np.uint8)
    if image.meta.label_names and np.issubdtype(arr.dtype, np.integer):
        return np.dtype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)
    if arr.dtype == np.float64:
        return np.dtype(np.float32)
    return arr.dtype


def write_nifti(image: MedImage, path: str | Path, *, dtype: str | np.dtype | None = None) -> Path:
    """Write an image or label map as NIfTI with its exact geometry.

    Both the sform and the qform are set from the image's RAS affine, with code 1 (scanner), so
    every reader finds the same geometry. A one-channel image is written as a 3D file; several
    channels become the 4th axis. 2D images are written as ``(x, y, 1)``.

    Args:
        image: Image or label map.
        path: Target ``.nii`` / ``.nii.gz`` path (written atomically).
        dtype: Output data type. Default: the array's dtype, except bool -> uint8, float64 ->
            float32, and integer label maps (with ``label_names``) -> uint8 or uint16. A float
            image with an integer ``dtype`` is stored scaled (``scl_slope``/``scl_inter``, chosen
            by nibabel to span the values): readers get floats back to within one step, e.g.
            probabilities as uint8 to within 1/255, a quarter of float32's size.

    Returns:
        The written path.

    Raises:
        ImageWriteError: Not a NIfTI file name, or values that do not fit ``dtype``.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ImageWriteError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    out_dtype = _output_dtype(image, dtype)
    arr = image.array
    scaled = np.issubdtype(out_dtype, np.integer) and np.issubdtype(arr.dtype, np.floating)
    if np.issubdtype(out_dtype, np.integer) and arr.size and not scaled:
        info = np.iinfo(out_dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise ImageWriteError(f"{path}: values {lo}..{hi} do not fit {out_dtype}")
    data = _nifti_layout(np.moveaxis(arr, 0, -1) if image.num_channels > 1 else arr[0], image)
    affine = image.meta.affine_ras()
    if scaled:  # nibabel picks slope/intercept so the float values span the integer range
        nii = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
        nii.set_data_dtype(out_dtype)
    else:
        nii = nib.Nifti1Image(np.asarray(data).astype(out_dtype, copy=False), affine)
    _save(nii, image, path, description=image.meta.provenance.series_description)
    logger.info("wrote %s (%s, %s)", path, data.shape, out_dtype)
    return path


def _nifti_layout(data: np.ndarray, image: MedImage) -> np.ndarray:
    """Channels-last ``data`` of ``image`` with a 2D image's singleton third axis added."""
    if image.meta.ndim != 2:
        return data
    return data[:, :, None] if image.num_channels == 1 else data[:, :, None, :]


def _save(nii: nib.Nifti1Image, image: MedImage, path: Path, *,
          description: str | None = None) -> None:
    """Both sform and qform from the image's RAS affine (code 1, scanner), units mm/s, the
    optional 80-byte ``descrip`` (what the volume is, e.g. synthetic), written atomically."""
    affine = image.meta.affine_ras()
    nii.header.set_sform(affine, code=1)
    nii.header.set_qform(affine, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    if description:
        nii.header["descrip"] = description.encode("ascii", "replace")[:79]
    with atomic_path(path) as tmp:
        nib.save(nii, str(tmp))


def write_nifti_unit_interval(image: MedImage, path: str | Path) -> Path:
    """Write values in ``[0, 1]`` (probabilities, uncertainty) as uint8 with a scale factor of
    1/255 (each value to within 1/510), quantised a channel at a time: no float32 copy of the
    whole image is ever made (``write_nifti(..., dtype=np.uint8)`` would make one).

    The channels go on the 4th axis, as :func:`write_nifti` writes them.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ImageWriteError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    arr = image.array
    quantised = np.empty(arr.shape[1:] + (arr.shape[0],), dtype=np.uint8, order="F")
    last = arr.shape[-1]
    step = max(1, (1 << 22) // max(1, int(np.prod(arr.shape[1:-1]))))
    for c in range(arr.shape[0]):  # a channel and a slab at a time: small float temporaries
        for k in range(0, last, step):
            part = arr[c, ..., k:k + step].astype(np.float32) * 255.0
            quantised[..., k:k + step, c] = np.clip(np.rint(part, out=part), 0, 255, out=part)
    nii = nib.Nifti1Image(_nifti_layout(quantised[..., 0] if arr.shape[0] == 1 else quantised,
                                        image), image.meta.affine_ras())
    nii.header.set_slope_inter(1.0 / 255.0, 0.0)
    _save(nii, image, path)
    return path
