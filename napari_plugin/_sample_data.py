"""npe2 sample data: a seeded synthetic abdominal CT with its ground-truth liver/lesion labels.

Generated at run time by :func:`medseg.demo.synthetic.make_ct_study` (about a second), with
anisotropic spacing and a non-zero origin so the geometry handling is visible: the labels layer
can be reviewed, measured and saved with the review widget right away.
"""

from __future__ import annotations

from typing import Any

from medseg.demo.synthetic import make_ct_study
from napari_plugin._geometry import image_layer_data
from napari_plugin._layers import labels_layer_data

SAMPLE_SHAPE = (128, 128, 32)
SAMPLE_SPACING = (2.4, 2.4, 5.0)
SAMPLE_SEED = 7
#: Abdominal soft-tissue window (HU).
CT_WINDOW = (-160.0, 240.0)
SAMPLE_COLORS = {1: (220, 120, 60), 2: (60, 200, 255)}


def make_sample_ct() -> list[tuple[Any, dict[str, Any], str]]:
    """A synthetic CT (``128 x 128 x 32`` at 2.4 x 2.4 x 5 mm) and its reference labels."""
    study = make_ct_study(SAMPLE_SHAPE, SAMPLE_SPACING, seed=SAMPLE_SEED)
    (data, kwargs, layer_type), = image_layer_data(study.image, name="synthetic CT")
    kwargs["contrast_limits"] = CT_WINDOW
    labels = labels_layer_data(
        study.label,
        name="synthetic CT reference labels",
        label_names=study.label.meta.label_names,
        label_colors=SAMPLE_COLORS,
        source_layer="synthetic CT",
    )
    return [(data, kwargs, layer_type), labels]


def make_sample_nuclei() -> list[tuple[Any, dict[str, Any], str]]:
    """A real fluorescence nuclei image (DSB2018, CC0, shipped in the package): one grey image
    layer, rows x columns as the file stores them, ready for the ``nuclei`` model."""
    from medseg.io import read_image
    from medseg.samples import nuclei_samples
    from napari_plugin._reader import grey_if_equal_channels

    path, _ = nuclei_samples()[0]
    image = grey_if_equal_channels(read_image(path))
    return image_layer_data(image, name=f"nuclei {path.stem[:8]} (DSB2018, CC0)")
