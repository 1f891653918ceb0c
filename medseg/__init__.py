"""medseg: geometry-exact medical image segmentation.

Public API (imported lazily so ``import medseg`` stays cheap)::

    from medseg.io import read_image, write_nifti, write_dicom_seg
    from medseg.inference import Segmenter
"""

__version__ = "0.1.0"
