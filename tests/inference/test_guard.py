"""The compute guard: a case's sliding-window work on the model grid, estimated before the
network runs, against the largest image the model was trained on."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import ThresholdNet, threshold_card

from medseg.errors import ConfigError
from medseg.inference import guard
from medseg.inference.batch import run_batch
from medseg.inference.engine import Segmenter
from medseg.inference.guard import ComputeLimitError, format_duration
from medseg.inference.options import MAX_WORK_ENV, InferenceOptions
from medseg.io import ImageMeta, MedImage, Provenance, write_nifti

LARGEST_MM = [40.0, 24.0, 16.0]  # the training images' field of view, largest first


class CountingNet(ThresholdNet):
    """The threshold network, counting its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def domain_card(name: str = "guarded"):
    card = threshold_card(roi=[16, 16, 16], target_spacing=[1.0, 1.0, 1.0])
    card.name = name
    card.domain = {"unit": "mm", "extent": {"min": [20.0, 20.0, 10.0], "max": LARGEST_MM},
                   "spacing": {"min": [1.0] * 3, "max": [1.0] * 3}}
    return card


def zeros(shape: tuple[int, ...], path: str = "case.nii.gz") -> MedImage:
    meta = ImageMeta.identity(len(shape), provenance=Provenance(path=path, format="nifti"))
    return MedImage(np.zeros((1, *shape), np.float32), meta)


@pytest.fixture(autouse=True)
def _fresh_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "_SECONDS", {})
    monkeypatch.delenv(MAX_WORK_ENV, raising=False)


def test_the_largest_training_image_is_at_most_the_reference_in_any_orientation() -> None:
    segmenter = Segmenter(ThresholdNet(), domain_card(), device="cpu")
    ratios = [segmenter.estimate_work(zeros(tuple(int(v) for v in order))).ratio
              for order in itertools.permutations(LARGEST_MM)]
    assert max(ratios) == 1.0 and all(0 < r <= 1.0 for r in ratios)
    smaller = segmenter.estimate_work(zeros((20, 20, 10)))
    assert smaller.ratio < 1.0 and not smaller.refused


def test_a_case_far_beyond_the_domain_is_refused_before_any_window(monkeypatch) -> None:
    net = CountingNet()
    segmenter = Segmenter(net, domain_card(), device="cpu")
    image = zeros((200, 200, 200), path="/data/huge.nii.gz")  # 15,625 windows of 16^3
    progress: list[int] = []
    t = time.perf_counter()
    with pytest.raises(ComputeLimitError) as caught:
        segmenter.predict(image, progress=lambda done, total: progress.append(done))
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0
    assert progress == [] and net.calls == 1 + guard.CALIBRATION_PASSES  # calibration only
    work = caught.value.estimate
    reference = segmenter.estimate_work(zeros((40, 24, 16))).windows
    assert work.windows == 25 ** 3 and work.reference_windows == reference
    assert work.ratio == pytest.approx(25 ** 3 / reference, rel=1e-3) and work.ratio > 100
    assert work.refused and work.seconds == pytest.approx(work.windows
                                                          * work.seconds_per_window, rel=1e-3)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("/data/huge.nii.gz: refused before running: 15,625 windows of "
                              "16x16x16 on the model grid (200x200x200), about ")
    assert f"{work.ratio:,.0f}x the {reference:,} windows of the largest image model " \
           "'guarded' was trained on (40x24x16 mm)" in message
    for way_out in ("region", "--force", "--max-work", "MEDSEG_MAX_WORK", "(now 100x)"):
        assert way_out in message


def test_force_a_higher_limit_or_a_region_lets_it_run() -> None:
    image = zeros((64, 48, 32))  # 7 x 5 x 3 windows: a few times the reference
    card = domain_card()
    refused = Segmenter(ThresholdNet(), card, device="cpu", max_work=2.0)
    assert refused.estimate_work(image).refused
    with pytest.raises(ComputeLimitError):
        refused.predict(image)
    forced = Segmenter(ThresholdNet(), card, device="cpu", max_work=2.0, force=True)
    prediction = forced.predict(image)
    assert prediction.work.forced and not prediction.work.refused
    assert prediction.work.ratio > 2.0 and prediction.num_windows == prediction.work.windows
    higher = Segmenter(ThresholdNet(), card, device="cpu", max_work=50.0)
    assert not higher.predict(image).work.refused
    box = ((0, 40), (0, 24), (0, 16))
    assert refused.estimate_work(image, region=box).ratio <= 1.0
    inside = refused.predict(image, region=box)
    assert inside.region == box and inside.labels.spatial_shape == (64, 48, 32)


def test_the_limit_comes_from_the_environment_and_is_validated(monkeypatch) -> None:
    assert InferenceOptions().max_work == 100.0
    monkeypatch.setenv(MAX_WORK_ENV, "2500")
    assert InferenceOptions().max_work == 2500.0
    monkeypatch.setenv(MAX_WORK_ENV, "lots")
    with pytest.raises(ConfigError, match="MEDSEG_MAX_WORK must be a positive number"):
        InferenceOptions()
    monkeypatch.delenv(MAX_WORK_ENV)
    for bad in (0, -1.0, float("inf"), True, "10"):
        with pytest.raises(ConfigError, match="max_work must be a positive number"):
            InferenceOptions(max_work=bad)


def test_a_card_without_a_domain_is_never_refused_nor_calibrated() -> None:
    net = CountingNet()
    segmenter = Segmenter(net, threshold_card(roi=[16, 16, 16]), device="cpu")
    work = segmenter.estimate_work(zeros((400, 400, 400)))
    assert not work.refused and work.reference_windows is None and work.ratio is None
    assert work.seconds is None and net.calls == 0
    assert work.windows == 50 ** 3


def test_a_2d_model_over_slices_counts_windows_per_slice_times_slices() -> None:
    """The tumour model resamples every slice to 256x256 (one window): its reference is the
    deepest training volume in slices, the most over the axis orders."""
    tumour = Segmenter.from_file("brain-flair-tumour", device="cpu")
    extent = tumour.card.domain["extent"]["max"]
    assert guard.reference_windows(tumour.card, overlap=0.5, margin=None) == max(extent)
    series = MedImage(np.zeros((1, 512, 512, 24), np.float32), ImageMeta.identity(3))
    work = tumour.estimate_work(series)
    assert work.windows == 24 and work.grid == [256, 256, 24] and not work.refused


def test_hippocampus_whole_head_runs_and_a_metre_cube_is_refused(shared_data) -> None:
    """The crop-trained hippocampus model: a whole-head T2 series is within the limit (and
    a box inside it far less); a 1024^3 volume at 1 mm is refused in well under a second."""
    from medseg.io import read_image

    segmenter = Segmenter.from_file("hippocampus", device="cpu")
    t2 = read_image(shared_data / "hippocrop_dicom" / "Study3" / "37830-T2reg-78532")
    whole = segmenter.estimate_work(t2)
    assert whole.reference_windows == 8 and not whole.refused and 10 < whole.ratio < 100
    box = segmenter.estimate_work(t2, region=((70, 130), (130, 210), (5, 10)))
    assert box.ratio <= 1.0
    cube = MedImage(np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (1, 1024, 1024, 1024)),
                    ImageMeta.identity(3))
    t = time.perf_counter()
    work = segmenter.estimate_work(cube)
    assert time.perf_counter() - t < 1.0
    assert work.refused and work.windows == 96_237 and work.ratio > 10_000


def test_the_batch_records_the_estimate_and_the_refusal(tmp_path: Path) -> None:
    engine = Segmenter(ThresholdNet(), domain_card(), device="cpu")
    inputs = tmp_path / "in"
    write_nifti(zeros((32, 24, 16)), inputs / "fits.nii.gz")
    write_nifti(zeros((200, 200, 200)), inputs / "huge.nii.gz")
    out = tmp_path / "out"
    summary = run_batch([inputs], "guarded", out, segmenter=engine)
    assert summary.completed == 1 and list(summary.failed) == ["huge"]
    assert summary.failed["huge"].endswith("with --max-work or MEDSEG_MAX_WORK")
    ok = json.loads((out / "fits.json").read_text())
    assert ok["work"]["windows"] > 1 and ok["work"]["ratio"] <= 1.0
    assert ok["work"]["seconds_per_window"] > 0 and ok["work"]["max_work"] == 100.0
    failed = json.loads((out / "_failed" / "huge.json").read_text())
    assert failed["error_type"] == "ComputeLimitError" and failed["work"]["refused"]
    assert "infer" not in failed["timings_s"]
    forced = run_batch([inputs], "guarded", out, segmenter=Segmenter(
        ThresholdNet(), domain_card(), InferenceOptions(device="cpu", force=True)))
    assert forced.completed == 1 and forced.already_done == 1 and forced.ok
    assert json.loads((out / "huge.json").read_text())["work"]["forced"]


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [format_duration(s) for s in (0.4, 89, 90, 5399, 5400)] == \
        ["0 s", "89 s", "2 min", "90 min", "1.5 h"]
