"""Every model says when the image in front of it is not what it was trained for: fit reports
of the shipped models on real files (../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.errors import ModelError
from medseg.inference import InferenceOptions, Segmenter
from medseg.inference.fit import check_input
from medseg.io import ImageMeta, MedImage, read_image
from medseg.model_card import read_model_card
from medseg.models import resolve_model


def _report(model: str, path: Path):  # noqa: ANN202 - FitReport
    card = read_model_card(resolve_model(model))
    image = read_image(path)
    segmenter_input = image.with_array(image.array[list(card.input_channels)]) \
        if card.input_channels and image.num_channels != card.network.in_channels else image
    return check_input(segmenter_input, card)


def _by_name(report) -> dict[str, tuple[str, str]]:  # noqa: ANN001
    return {c.name: (c.level, c.message) for c in report.checks}


def test_hippocampus_on_a_hippocampus_crop_is_ok(shared_data: Path) -> None:
    segmenter = Segmenter.from_file("hippocampus", InferenceOptions(device="cpu"))
    prediction = segmenter.predict(read_image(shared_data / "hippocrop_dicom" / "Study1"
                                              / "13_HCropVolume"))
    assert prediction.fit.level == "ok", prediction.fit.to_dict()
    checks = _by_name(prediction.fit)
    assert checks["modality"][0] == "ok" and checks["field_of_view"][0] == "ok"
    assert checks["label_sizes"][0] == "ok"


def test_hippocampus_on_a_full_field_series_warns_about_the_field_of_view(
        shared_data: Path) -> None:
    report = _report("hippocampus", shared_data / "hippocrop_dicom" / "Study3"
                     / "37830-T2reg-78532")
    level, message = _by_name(report)["field_of_view"]
    assert report.level == "warn" and level == "warn"
    assert message.startswith("this model was trained on images of 40x32x26 mm to 58x47x41 mm; "
                              "this image covers ")
    assert "crop it to the region the model segments first (napari: segment inside a box)" \
        in message


def test_isbi2012_on_a_fluorescence_nuclei_image_warns(shared_data: Path) -> None:
    image = next((shared_data / "dsb2018_nuclei" / "images").glob("00071198*.png"))
    report = _report("isbi2012", image)
    checks = _by_name(report)
    assert report.level == "warn"
    assert checks["intensity"][0] == "warn"
    assert "do not look like the training images'" in checks["intensity"][1]
    assert checks["modality"][0] == "skipped"  # a PNG does not say its modality


def test_demo_model_on_a_real_ct_warns_that_it_is_synthetic(shared_data: Path) -> None:
    report = _report("demo-liver-lesion", shared_data / "totalseg_ct" / "example_ct_sm.nii.gz")
    level, message = _by_name(report)["training_data"]
    assert level == "warn" and "trained on synthetic data only" in message
    assert "not for real patient images" in message


def test_a_3d_model_on_a_2d_image_is_refused() -> None:
    segmenter = Segmenter.from_file("hippocampus", InferenceOptions(device="cpu"))
    flat = MedImage(np.zeros((1, 40, 50), np.float32), ImageMeta.identity(2))
    with pytest.raises(ModelError, match="model 'hippocampus' is 3D but the image is 2D"):
        segmenter.predict(flat)


def test_strict_runs_fail_misfits_and_records_keep_the_report(shared_data: Path,
                                                             tmp_path: Path) -> None:
    from medseg.cli.predict import app

    crop = shared_data / "hippocrop_dicom" / "Study1" / "13_HCropVolume"
    full = shared_data / "hippocrop_dicom" / "Study3" / "37830-T2reg-78532"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["-m", "hippocampus", "-o", str(out), "--device", "cpu",
                                      "-f", "nifti", "--strict", str(crop), str(full)])
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "_summary.json").read_text())
    (failed_id, reason), = summary["failed"].items()
    assert "strict run, and the image does not fit model 'hippocampus'" in reason
    assert "this image covers" in reason
    ok = [r for r in summary["records"] if r["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["fit_level"] == "ok"
    record = json.loads((out / f"{ok[0]['case_id']}.json").read_text())
    assert record["fit"]["level"] == "ok" and record["fit"]["checks"]
    assert "fit" in record["timings_s"]
    # without --strict a misfit is segmented and the warning printed (a fast one: the nuclei
    # model on an EM slice)
    em = sorted((shared_data / "isbi2012_em" / "train" / "image").iterdir())[0]
    loose = CliRunner().invoke(app, ["-m", "nuclei", "-o", str(tmp_path / "loose"),
                                     "--device", "cpu", str(em)])
    assert loose.exit_code == 0, loose.output
    assert f"warning {em.name.split('.')[0]}" in loose.stderr
    assert "normalisation do not look like the training images'" in loose.stderr


def test_a_pixel_size_in_micrometres_does_not_rescale_a_model_trained_in_pixels(
        tmp_path: Path) -> None:
    """The nuclei model learned on PNGs without a pixel size (unit px): an ImageJ TIFF of the
    same pixels with 0.325 um pixels must give the same objects (it was shrunk threefold when
    0.325 um was read as 0.325 px), with areas in um^2 instead of px^2."""
    import tifffile
    from PIL import Image

    from medseg.samples import nuclei_samples

    png, _ = nuclei_samples()[0]
    pixels = np.asarray(Image.open(png))[..., 0]
    tif = tmp_path / "same.tif"
    tifffile.imwrite(tif, pixels, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"unit": "um"})
    seg = Segmenter.from_file("nuclei", device="cpu")
    a, b = seg.predict(read_image(png)), seg.predict(read_image(tif))
    assert read_image(tif).meta.spacing == pytest.approx((0.325, 0.325))
    assert (a.area_unit, b.area_unit) == ("px^2", "um^2")
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert a.num_objects == b.num_objects > 20
    total = sum(a.areas.values())
    assert sum(b.areas.values()) == pytest.approx(total * 0.325 ** 2, rel=1e-6)
    # the fit report compares a micrometre image with pixel training sizes: skipped, not warned
    sizes = {c.name: c.level for c in b.fit.checks}
    assert sizes["field_of_view"] == "skipped"
