"""Read training images and label maps as :class:`MedImage`.

Uses ``medseg.io.read_image`` / ``read_dicom_seg`` when the io layer provides them; until then a
small fallback reads NIfTI (nibabel), 2D PNG/TIFF (Pillow/tifffile) and DICOM series
(SimpleITK/GDCM), so training does not depend on the io layer's progress.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import DatasetError, MedsegError
from medseg.io.image import ImageMeta, MedImage, Provenance

logger = logging.getLogger(__name__)


def read_case_image(path: Path) -> MedImage:
    """Read an image file or DICOM series folder (channel-first, geometry in LPS)."""
    try:
        from medseg.io import read_image  # type: ignore[attr-defined]
    except ImportError:
        read_image = _fallback_read
    try:
        return read_image(path)
    except MedsegError:
        raise
    except Exception as exc:  # readers raise many library-specific types
        raise DatasetError(f"{path}: cannot be read as an image ({exc})") from exc


def read_case_label(path: Path, reference: MedImage, *, is_seg: bool = False) -> MedImage:
    """Read a label map (a DICOM SEG is rasterised onto ``reference``'s grid)."""
    if not is_seg:
        return read_case_image(path)
    try:
        from medseg.io import read_dicom_seg  # type: ignore[attr-defined]
    except ImportError as exc:
        raise DatasetError(
            f"{path}: reading DICOM SEG labels needs medseg.io.read_dicom_seg") from exc
    return read_dicom_seg(path, reference)


def _fallback_read(path: Path) -> MedImage:
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return _read_dicom_series(path)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        data = np.moveaxis(data, -1, 0) if data.ndim == 4 else data[None]
        meta = ImageMeta.from_affine(img.affine, ras=True,
                                     provenance=Provenance(path=str(path), format="nifti"))
        return MedImage(data, meta)
    if name.endswith((".png", ".tif", ".tiff")):
        if name.endswith(".png"):
            from PIL import Image

            data = np.asarray(Image.open(path))
        else:
            import tifffile

            data = tifffile.imread(path)
        if data.ndim == 3:  # (rows, cols, channels) -> keep the first channel of RGB(A)
            data = data[..., 0]
        # Image rows are the second ITK axis: (rows, cols) -> (i=cols, j=rows).
        fmt = "png" if name.endswith(".png") else "tiff"
        return MedImage(data.T[None].copy(),
                        ImageMeta.identity(2, provenance=Provenance(path=str(path), format=fmt)))
    import SimpleITK as sitk

    return _from_sitk(sitk.ReadImage(str(path)), path, "itk")


def _read_dicom_series(folder: Path) -> MedImage:
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise DatasetError(f"{folder}: no DICOM series found")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return _from_sitk(reader.Execute(), folder, "dicom")


def _from_sitk(img: object, path: Path, fmt: str) -> MedImage:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img).T  # (k, j, i) -> (i, j, k)
    n = img.GetDimension()
    meta = ImageMeta(
        spacing=tuple(img.GetSpacing()),
        origin=tuple(img.GetOrigin()),
        direction=tuple(tuple(r) for r in np.reshape(img.GetDirection(), (n, n))),
        provenance=Provenance(path=str(path), format=fmt),
    )
    return MedImage(np.ascontiguousarray(arr)[None], meta)
