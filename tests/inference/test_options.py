"""One typed InferenceOptions from the edge (CLI, API, napari) to the engine and the record."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.inference import InferenceOptions, PostprocessConfig, Segmenter
from medseg.inference.batch import run_batch
from medseg.inference.options import merge_options


@pytest.mark.parametrize(("change", "message"), [
    ({"overlap": 1.0}, r"overlap must be in \[0, 1\)"),
    ({"overlap": -0.1}, r"overlap must be in \[0, 1\)"),
    ({"sw_batch_size": 0}, "sw_batch_size must be a positive integer"),
    ({"blend": "max"}, "blend must be one of"),
    ({"min_size_ml": float("nan")}, "min_size_ml must be >= 0"),
])
def test_bad_settings_are_refused_at_the_edge(change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        InferenceOptions(**change)


def test_settings_merge_and_unknown_names_are_refused() -> None:
    base = InferenceOptions(tta=True)
    merged = merge_options(base, overlap=0.25, postprocess=PostprocessConfig(keep_largest=True))
    assert (merged.tta, merged.overlap, merged.keep_largest) == (True, 0.25, True)
    assert merge_options(None) == InferenceOptions()
    with pytest.raises(ConfigError, match=r"unknown inference options: \['overlapp'\]"):
        merge_options(base, overlapp=0.2)
    assert pickle.loads(pickle.dumps(merged)) == merged  # travels to Ray workers as it is


def test_the_same_object_reaches_the_engine_and_the_record(tmp_path: Path,
                                                          tiny_model_file: Path) -> None:
    import numpy as np

    from medseg.io import ImageMeta, MedImage, write_nifti

    write_nifti(MedImage(np.zeros((1, 18, 17, 16), "f4"), ImageMeta.identity(3)),
                tmp_path / "in" / "c.nii.gz")
    options = InferenceOptions(device="cpu", overlap=0.25, low_memory=True, keep_largest=True)
    segmenter = Segmenter.from_file(tiny_model_file, options)
    assert segmenter.inference_options == options and segmenter.overlap == 0.25
    summary = run_batch([tmp_path / "in"], tiny_model_file, tmp_path / "out", inference=options)
    record = json.loads((tmp_path / "out" / "c.json").read_text())
    assert record["provenance"]["inference_options"] == options.to_dict()
    assert record["provenance"]["options"]["low_memory"] is True
    assert summary.ok


def test_ray_workers_are_handed_the_whole_options(tmp_path: Path,
                                                  tiny_model_file: Path) -> None:
    """The runner gets ``load_segmenter``, a picklable partial carrying the options object
    (so --low-memory reaches workers on an existing cluster, with no environment variable)."""
    seen = []

    def runner(cases, batch_options, out_dir, load_segmenter):  # noqa: ANN001, ANN202
        seen.append(pickle.loads(pickle.dumps(load_segmenter)))
        return iter(())

    options = InferenceOptions(device="cpu", low_memory=True, tta=True)
    run_batch([tmp_path], tiny_model_file, tmp_path / "out", inference=options, runner=runner)
    (load,) = seen
    assert options in load.args
    assert load().inference_options == options


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path: Path, tiny_model_file: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli.predict import app

    result = CliRunner().invoke(app, ["-m", str(tiny_model_file), "-o", str(tmp_path / "o"),
                                      "--device", "cuda", str(tmp_path)])
    assert result.exit_code == 2
    assert "no CUDA device is available here" in result.stderr
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(app, ["-m", str(tiny_model_file), "-o", str(tmp_path / "o"),
                                   "--overlap", "1.5", str(tmp_path)])
    assert bad.exit_code == 2 and "overlap must be in [0, 1)" in bad.stderr


def test_object_diameter_takes_positive_pixel_counts_only() -> None:
    import numpy as np

    assert InferenceOptions(object_diameter=np.float32(12.5)).object_diameter == 12.5
    assert type(InferenceOptions(object_diameter=np.int64(30)).object_diameter) is float
    assert InferenceOptions().object_diameter is None
    assert InferenceOptions(object_diameter="auto").object_diameter == "auto"
    for bad in (0, -3.0, float("nan"), float("inf"), True, "20", "Auto"):
        with pytest.raises(ConfigError, match="object_diameter"):
            InferenceOptions(object_diameter=bad)
