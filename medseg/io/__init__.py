"""Readers and writers that keep geometry exact (see docs/ARCHITECTURE.md).

Every reader returns a :class:`MedImage` (channel-first array + :class:`ImageMeta` in LPS) and
every writer takes one and writes atomically through :func:`medseg.io.atomic.atomic_path`.
"""

from medseg.io.atomic import atomic_path
from medseg.io.dicom_scan import DicomSeriesInfo, list_dicom_series
from medseg.io.dicom_seg_read import read_dicom_seg
from medseg.io.dicom_seg_write import write_dicom_seg
from medseg.io.dicom_series import read_dicom_series
from medseg.io.dicom_write import write_dicom_series
from medseg.io.discovery import find_dicom_series, find_image_files, is_dicom_file, is_image_file
from medseg.io.image import ImageMeta, MedImage, Provenance
from medseg.io.itk_formats import read_itk_image, write_itk_image
from medseg.io.nifti import read_nifti, write_nifti
from medseg.io.reader import read_image

__all__ = [
    "DicomSeriesInfo",
    "ImageMeta",
    "MedImage",
    "Provenance",
    "atomic_path",
    "find_dicom_series",
    "find_image_files",
    "is_dicom_file",
    "is_image_file",
    "list_dicom_series",
    "read_dicom_seg",
    "read_dicom_series",
    "read_image",
    "read_itk_image",
    "read_nifti",
    "write_dicom_seg",
    "write_dicom_series",
    "write_itk_image",
    "write_nifti",
]
