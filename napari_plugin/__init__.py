"""medseg's napari plugin (npe2 manifest ``napari.yaml``, plugin name ``medseg``).

A client of medseg's public API only; ``medseg`` itself never imports napari or Qt.

Modules:
    _geometry: medseg ``(i, j, k)``/LPS grids <-> napari ``(z, y, x)`` layers (scale, translate,
        affine) and back.
    _reader: readers for DICOM series folders/files, NIfTI, NRRD and MHA.
    _layers: labels ``LayerData`` with names, colours and the source grid in the metadata.
    _logic: pure helpers behind the widgets (volumes, slices, colours, names, devices).
    _run: one segmentation run without Qt (capture, engine, result layer).
    _segment_widget / _review_widget: the two dock widgets.
    _save: NIfTI / DICOM SEG output on the source grid (also the npe2 labels writer).
    _sample_data: a seeded synthetic CT with labels.
"""
