"""napari ``LayerData`` for medseg label maps: geometry, label names, colours, provenance.

A medseg labels layer carries in its metadata everything needed to save it on the source grid
without looking at the layer's transform again: the grid (:data:`META_KEY`), its shape, the
label names and colours, and which image and model produced it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from medseg.io.image import MedImage
from napari_plugin._geometry import layer_metadata, layer_transform, to_layer_array
from napari_plugin._logic import colormap_dict, label_colors_for

LABEL_NAMES_KEY = "medseg_label_names"
LABEL_COLORS_KEY = "medseg_label_colors"
SOURCE_LAYER_KEY = "medseg_source_layer"
MODEL_KEY = "medseg_model"
#: True on a layer of object ids 1..N (an instance model's result), not of classes.
INSTANCES_KEY = "medseg_instances"

LayerData = tuple[Any, dict[str, Any], str]


def label_colormap(
    colors: Mapping[int, Sequence[int]],
    *,
    hidden: set[int] | frozenset[int] = frozenset(),
    opacity: Mapping[int, float] | None = None,
) -> DirectLabelColormap:
    """A napari colormap drawing each label in its colour (see :func:`colormap_dict`)."""
    return DirectLabelColormap(color_dict=colormap_dict(colors, hidden=hidden, opacity=opacity))


def label_features(label_names: Mapping[int, str]) -> dict[str, list[Any]]:
    """A napari ``features`` table so the status bar names the label under the cursor."""
    items = sorted((int(k), str(v)) for k, v in label_names.items())
    return {"index": [k for k, _ in items], "name": [v for _, v in items]}


def labels_layer_data(
    labels: MedImage,
    *,
    name: str,
    label_names: Mapping[int, str],
    label_colors: Mapping[int, Sequence[int]] | None = None,
    source_layer: str | None = None,
    model: str | None = None,
    instances: bool = False,
) -> LayerData:
    """``(data, kwargs, "labels")`` for a one-channel medseg label map.

    Args:
        labels: ``(1, *spatial)`` integer label map with its grid.
        name: Layer name.
        label_names: ``{value: name}``; background 0 may be included.
        label_colors: ``{value: (r, g, b)}``; labels without one get a default colour.
        source_layer: Name of the image layer the labels belong to.
        model: Model that produced them (shipped name or checkpoint path).
        instances: The map holds object ids 1..N (napari's own colours, no per-id names).
    """
    values = sorted({int(v) for v in label_names} | {int(v) for v in np.unique(labels.array)})
    colors = {} if instances else label_colors_for(values, label_colors)
    names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    metadata = {
        **layer_metadata(labels.meta, labels.spatial_shape),
        LABEL_NAMES_KEY: {str(k): v for k, v in names.items()},
        LABEL_COLORS_KEY: {str(k): list(v) for k, v in colors.items()},
        SOURCE_LAYER_KEY: source_layer,
        MODEL_KEY: model,
        INSTANCES_KEY: bool(instances),
    }
    kwargs = {
        **layer_transform(labels.meta),
        "name": name,
        "metadata": metadata,
        **({} if instances else {"colormap": label_colormap(colors),
                                  "features": label_features({0: "background", **names})}),
        "opacity": 0.6,
    }
    return to_layer_array(labels.array[0]), kwargs, "labels"


def stored_label_names(metadata: Mapping[str, Any]) -> dict[int, str]:
    """``{value: name}`` stored on a medseg labels layer (empty if none)."""
    return {int(k): str(v) for k, v in (metadata.get(LABEL_NAMES_KEY) or {}).items()}


def stored_label_colors(metadata: Mapping[str, Any]) -> dict[int, tuple[int, int, int]]:
    """``{value: (r, g, b)}`` stored on a medseg labels layer (empty if none)."""
    return {
        int(k): (int(v[0]), int(v[1]), int(v[2]))
        for k, v in (metadata.get(LABEL_COLORS_KEY) or {}).items()
    }
