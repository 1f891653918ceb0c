"""Fine-tuning a model on a folder of corrected images (``medseg.training.finetune``), end to
end on tiny cases of every kind: 2D colour images for an instance model, NIfTI volumes and a
DICOM series with a DICOM SEG for a 3D model, NIfTI volumes for a 2D-on-volume model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_data import sphere_case

from medseg.errors import DatasetError
from medseg.io import ImageMeta, MedImage, read_image, write_dicom_series, write_nifti
from medseg.model_card import file_sha256, read_model_card
from medseg.models import list_models, resolve_model
from medseg.training.finetune import FinetuneOptions, FinetuneProgress, finetune

#: A fixed, tiny amount of training (the time budget is the default; tests need steps).
FEW_STEPS = {"time_budget_min": None, "epochs": 1, "iters_per_epoch": 2, "batch_size": 2,
             "amp": "off"}


@pytest.fixture(autouse=True)
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "my-models"
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(folder))
    return folder


def he_like(seed: int, shape: tuple[int, int] = (64, 72)) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA image of dark purple discs on a pale pink background, and their instance ids."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = np.zeros(shape, np.uint16)
    for n in range(1, 7):
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)
        ids[((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(16, 40)) & (ids == 0)] = n
    rgba = np.empty((*shape, 4), np.uint8)
    rgba[...] = (230, 190, 220, 255)
    rgba[ids > 0] = (90, 40, 140, 255)
    rgba[..., :3] = np.clip(rgba[..., :3] + rng.normal(0, 8, (*shape, 3)), 0, 255)
    return rgba, ids


def write_he_folder(root: Path, n: int, *, seed: int = 0) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgba, ids = he_like(seed + i)
        Image.fromarray(rgba).save(root / "images" / f"he{i}.png")
        Image.fromarray(ids).save(root / "masks" / f"he{i}.png")
    return root


def test_finetune_2d_colour_instance_model(tmp_path: Path, user_models: Path) -> None:
    folder = write_he_folder(tmp_path / "corrections", 2)
    seen: list[FinetuneProgress] = []
    result = finetune(FinetuneOptions(base="nuclei", data=folder, minutes=2.0, num_threads=1,
                                      overrides={**FEW_STEPS, "patch_size": [64, 64]}),
                      progress=seen.append)
    assert result.metric == "AP@0.5 (pooled)"
    assert result.steps == 2
    # two images: a band of each is held back, the rest of each trains
    assert result.train_cases == ["he0-train", "he1-train"]
    assert result.val_cases == ["he0-val", "he1-val"]
    assert [p.phase for p in seen][:2] == ["checking", "scoring base"]
    assert seen[-1].phase == "done"
    assert all(p.budget_s == 120.0 and p.eta_s == pytest.approx(120.0 - p.elapsed_s)
               for p in seen)
    card = read_model_card(result.model_path)
    story = card.training["finetune"]
    assert story["base"] == {"name": "nuclei", "path": str(resolve_model("nuclei")),
                             "sha256": file_sha256(resolve_model("nuclei"))}
    assert [i["name"] for i in story["images"]] == ["he0", "he1"]
    assert story["images"][0]["sha256"] == file_sha256(folder / "images" / "he0.png")
    assert story["images"][0]["objects"] == 6
    assert (story["before"], story["after"], story["steps"]) == (
        round(result.before, 4), round(result.after, 4), 2)
    # the rule alone (the base's weights, no training) was scored too; the better weights won
    assert story["base_with_rule"] == round(result.with_rule, 4)
    assert result.after == max(result.with_rule, story["trained"]) or abs(
        result.after - max(result.with_rule, story["trained"])) < 1e-4
    # dark objects on a bright background, for a model of bright nuclei on black
    assert card.channel_rule == "luminance-auto" and card.input_channels is None
    base_instances = read_model_card(resolve_model("nuclei")).instances
    # the base's instance settings (each image sized to the base's objects), or others
    # re-chosen on the held-back images
    assert (_without_diameter(card.instances) == base_instances) != story["instances_rechosen"]
    assert card.instances["method"] == "boundary" and set(card.instances) >= set(
        base_instances) - {"min_score"}
    assert card.domain["num_cases"] == 2 and card.domain["unit"] == "px"
    # the discs (about 10 px across) were learnt at the base's object size (zoomed 2x, the
    # most allowed), and a trained model sizes each image it meets
    scale = story["object_scale"]
    assert scale["diameter_px"] == round(read_model_card(resolve_model("nuclei"))
                                         .object_diameter_px, 2)
    assert sorted(scale["zoom"]) == ["he0-train", "he0-val", "he1-train", "he1-val"]
    assert all(z == 2.0 for z in scale["zoom"].values())
    # ... and so does the base's weights with the rule alone, when they won
    assert card.instances.get("object_diameter") == "auto"
    assert json.loads(result.card_path.read_text())["name"] == card.name
    # the fit report accepts the new kind of image, which the base model's warns about
    from medseg.inference import Segmenter

    rgba, _ = he_like(9)
    image = read_image(write_he_folder(tmp_path / "next", 1, seed=9) / "images" / "he0.png")
    assert image.num_channels == 4 and np.array_equal(image.array[0].T, rgba[..., 0])

    def intensity(model: Path | str) -> str:
        checks = Segmenter.from_file(model, device="cpu").predict(image).fit.checks
        return next(c.level for c in checks if c.name == "intensity")

    assert (intensity("nuclei"), intensity(result.model_path)) == ("warn", "ok")
    if result.improved:  # exported under its name in the user's models, runnable by name
        assert result.model_path == user_models / f"{card.name}.safetensors"
        assert card.name in list_models() and resolve_model(card.name) == result.model_path
    else:
        assert result.model_path.parent == user_models / "candidates"
        assert card.name not in list_models()


def test_the_rule_alone_is_scored_and_kept_sized_to_the_base_objects(tmp_path: Path) -> None:
    """At one object scale, the base's weights with the channel rule alone are scored as the
    fine-tuned weights are, each image sized to the base's objects; when they win, the exported
    card sizes each image too."""
    folder = write_he_folder(tmp_path / "corrections", 2)
    # no learning: the trained weights are the base's, so the rule alone wins the tie
    result = finetune(FinetuneOptions(base="nuclei", data=folder, minutes=1.0, num_threads=1,
                                      export=tmp_path / "he.safetensors",
                                      overrides={**FEW_STEPS, "lr": 0.0,
                                                 "patch_size": [64, 64]}))
    card = read_model_card(result.model_path)
    assert result.kept_base_weights
    assert result.with_rule == pytest.approx(card.training["finetune"]["trained"], abs=1e-4)
    assert card.instances["object_diameter"] == "auto"
    assert card.channel_rule == "luminance-auto"
    assert _without_diameter(card.instances) == read_model_card(
        resolve_model("nuclei")).instances


def _without_diameter(instances: dict) -> dict:
    """A card's instance settings but the object diameter (how each image is sized)."""
    return {k: v for k, v in instances.items() if k != "object_diameter"}


def test_a_model_not_better_is_kept_as_a_candidate_only(tmp_path: Path) -> None:
    folder = write_he_folder(tmp_path / "corrections", 2)
    export = tmp_path / "out" / "he.safetensors"
    # no learning and the base's own input (the red channel): the base again, not better
    result = finetune(FinetuneOptions(base="nuclei", data=folder, minutes=1.0, export=export,
                                      num_threads=1, object_scale=False, overrides={
                                          **FEW_STEPS, "lr": 0.0, "patch_size": [64, 64],
                                          "data.channel_rule": "red"}))
    assert result.after == pytest.approx(result.before)
    assert not result.improved and result.candidate
    # the rule 'red' is the base's own pick: the rule alone scores as the base, and training
    # (none) did not beat it, so the base's weights are what was kept
    assert result.with_rule == pytest.approx(result.before) and result.kept_base_weights
    assert not export.exists()
    assert result.model_path == tmp_path / "out" / "he.candidate.safetensors"
    assert "not better: nothing exported" in result.summary()
    # a fine-tuned model (or candidate) is itself a base
    again = finetune(FinetuneOptions(base=str(result.model_path), data=folder, minutes=1.0,
                                     num_threads=1, name="he-2",
                                     overrides={**FEW_STEPS, "patch_size": [64, 64]}))
    card = read_model_card(again.model_path)
    assert card.training["finetune"]["base"]["name"] == "he"
    assert card.channel_rule == "red"  # the base's rule is kept


@pytest.mark.parametrize("bad, message", [
    ("binary", r"\d separate objects all carry the value 255, but model 'nuclei' "
               "separates objects"),
    ("missing", "no mask"),
    ("shape", "mask of shape"),
])
def test_misfits_are_refused_before_training_naming_the_file(tmp_path: Path, bad: str,
                                                             message: str) -> None:
    folder = write_he_folder(tmp_path / "corrections", 2)
    mask = folder / "masks" / "he1.png"
    if bad == "binary":
        Image.fromarray(np.where(np.asarray(Image.open(mask)) > 0, 255, 0).astype(np.uint8)
                        ).save(mask)
    elif bad == "missing":
        mask.unlink()
    else:
        Image.fromarray(np.zeros((10, 10), np.uint16)).save(mask)
    with pytest.raises(DatasetError, match=message) as err:
        finetune(FinetuneOptions(base="nuclei", data=folder, minutes=1.0))
    assert "he1" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "my-models" / "runs").exists()  # refused before anything ran


def test_class_values_must_be_the_models(tmp_path: Path) -> None:
    root = tmp_path / "volumes"
    write_volume_pair(root, "v0", seed=0)
    label = read_image(root / "masks" / "v0.nii.gz")
    write_nifti(label.with_array(np.where(label.array > 0, 7, 0).astype(np.uint8)),
                root / "masks" / "v0.nii.gz")
    with pytest.raises(DatasetError, match=r"v0.nii.gz: label values \[7\] are not among "
                                           r"model 'hippocampus'"):
        finetune(FinetuneOptions(base="hippocampus", data=root, minutes=1.0))


def write_volume_pair(root: Path, stem: str, *, seed: int,
                      shape: tuple[int, int, int] = (24, 32, 24)) -> None:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image, label = sphere_case(shape, seed=seed, radius=7.0)
    meta = ImageMeta(spacing=(1.0, 1.0, 1.0), origin=(3.0, -4.0, 10.0),
                     direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    write_nifti(MedImage(image[None], meta), root / "images" / f"{stem}.nii.gz")
    write_nifti(MedImage(label[None], meta), root / "masks" / f"{stem}.nii.gz")


def test_finetune_3d_model_on_nifti_and_dicom_seg(tmp_path: Path) -> None:
    from medseg.io import write_dicom_seg

    root = tmp_path / "volumes"
    write_volume_pair(root, "v0", seed=0)
    image, label = sphere_case((24, 32, 12), seed=5, radius=6.0)
    meta = ImageMeta(spacing=(1.0, 1.0, 2.0), origin=(5.0, -7.0, 20.0),
                     direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    write_dicom_series(MedImage(image[None].astype(np.int16), meta), root / "images" / "p1",
                       modality="MR")
    series = read_image(root / "images" / "p1")
    write_dicom_seg(series.with_array(label[None]), series, root / "masks" / "p1.dcm",
                    label_names={1: "Anterior", 2: "Posterior"})
    result = finetune(FinetuneOptions(base="hippocampus", data=root, minutes=2.0,
                                      num_threads=1,
                                      overrides={**FEW_STEPS, "patch_size": [24, 32, 24]}))
    assert result.metric == "Dice (mean over classes)"
    assert sorted(result.val_cases) == ["p1-val", "v0-val"]
    card = read_model_card(result.model_path)
    assert card.network == read_model_card(resolve_model("hippocampus")).network
    assert [i["name"] for i in card.training["finetune"]["images"]] == ["p1", "v0"]
    assert card.domain["unit"] == "mm" and card.channel_rule is None
    assert 0.0 <= result.before <= 1.0 and 0.0 <= result.after <= 1.0


def write_flair_folder(root: Path) -> Path:
    """Two 64 x 64 x 5 volumes with one-class (0/1) masks, as a tumour model's corrections."""
    for i in range(2):
        write_volume_pair(root, f"patient{i}", seed=i, shape=(64, 64, 5))
        label = read_image(root / "masks" / f"patient{i}.nii.gz")
        write_nifti(label.with_array((label.array > 0).astype(np.uint8)),
                    root / "masks" / f"patient{i}.nii.gz")
    return root


def test_finetune_2d_model_on_volumes(tmp_path: Path, user_models: Path) -> None:
    root = write_flair_folder(tmp_path / "flair")
    result = finetune(FinetuneOptions(base="brain-flair-tumour-fast", data=root, minutes=2.0,
                                      num_threads=1,
                                      overrides={**FEW_STEPS, "patch_size": [64, 64]}))
    # the last slice of each volume is held back, whole
    assert result.val_cases == ["patient0-val", "patient1-val"]
    name = read_model_card(result.model_path).name
    held = read_image(user_models / "runs" / name / "bands" / "images" / "patient0-val.nii.gz")
    assert held.spatial_shape == (64, 64, 1)
    # slices are trained at the model's field of view (256 px), as the engine runs them
    stored = sorted((user_models / "runs" / name / "train" / "cases-0").iterdir())
    image, label = (np.load(stored[0] / f) for f in ("image.npy", "label.npy"))
    assert image.shape == (1, 256, 256, 4) and label.shape == (1, 256, 256, 4)
    assert set(np.unique(label)) == {0, 1}
    assert result.metric == "Dice (mean over classes)" and result.steps == 2


def test_finetune_a_2_5d_model_keeps_its_context_and_the_thread_count(
        tmp_path: Path, user_models: Path) -> None:
    """A 2.5D base (neighbouring slices as channels) is fine-tuned with the same context, and
    the caller's torch thread count is its own again afterwards."""
    import dataclasses

    import torch

    from medseg.model_card import load_model, save_model
    from medseg.networks import build_network

    _, card = load_model(resolve_model("brain-flair-tumour-fast"))
    card = dataclasses.replace(card, name="flair-25d", context_slices=1,
                               network=dataclasses.replace(card.network, in_channels=3))
    base = save_model(tmp_path / "flair-25d.safetensors", build_network(card.network), card)
    root = write_flair_folder(tmp_path / "flair")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = finetune(FinetuneOptions(base=str(base), data=root, minutes=2.0, num_threads=1,
                                          overrides={**FEW_STEPS, "patch_size": [64, 64]}))
        assert torch.get_num_threads() == 2  # training ran on 1, the caller keeps its 2
    finally:
        torch.set_num_threads(threads)
    tuned = read_model_card(result.model_path)
    assert tuned.context_slices == 1 and tuned.network.in_channels == 3
    stored = sorted((user_models / "runs" / tuned.name / "train" / "cases-0").iterdir())
    assert np.load(stored[0] / "image.npy").shape == (3, 256, 256, 4)  # 3 slices per slice
    assert result.steps == 2


@pytest.mark.parametrize("dark_objects, rule", [(True, "luminance-auto"),
                                                (False, "luminance")])
def test_polarity_of_grey_images_follows_the_base_models_images(
        tmp_path: Path, dark_objects: bool, rule: str) -> None:
    from medseg.training.finetune_data import check_pairs, index_folder
    from medseg.training.finetune_run import polarity_rule

    folder = write_he_folder(tmp_path / "grey", 2)
    for path in (folder / "images").iterdir():
        grey = np.asarray(Image.open(path))[..., 1]
        Image.fromarray(grey if dark_objects else 255 - grey).save(path)
    card = read_model_card(resolve_model("nuclei"))
    check = check_pairs(index_folder(folder), card)
    assert not check.colour and check.channels == {1}
    assert polarity_rule(check, card) == rule


def test_finetune_with_the_colours_widens_the_base(tmp_path: Path) -> None:
    """``data.channel_rule: rgb-auto``: the one-channel base starts widened to R, G and B
    (scored as such before training), the card says so, and the model runs on colour and
    grey images alike."""
    from medseg.inference import Segmenter

    folder = write_he_folder(tmp_path / "corrections", 2)
    result = finetune(FinetuneOptions(
        base="nuclei", data=folder, minutes=2.0, num_threads=1,
        overrides={**FEW_STEPS, "patch_size": [64, 64], "data.channel_rule": "rgb-auto"}))
    card = read_model_card(result.model_path)
    assert card.channel_rule == "rgb-auto" and card.network.in_channels == 3
    assert result.with_rule is not None  # the widened base, untrained, was scored
    assert card.training["finetune"]["channel_rule"] == "rgb-auto"
    segmenter = Segmenter.from_file(result.model_path, device="cpu")
    colour = read_image(folder / "images" / "he0.png")
    grey = colour.with_array(colour.array[1:2])
    for image in (colour, grey):
        assert segmenter.predict(image).labels.array.shape[1:] == image.array.shape[1:]


def test_keep_skill_mixes_in_images_like_the_base_models(tmp_path: Path) -> None:
    folder = write_he_folder(tmp_path / "corrections", 2)
    keep = tmp_path / "fluorescence"
    for sub in ("images", "masks"):
        (keep / sub).mkdir(parents=True)
    for i in range(3):  # bright objects on black, grey stored as RGBA like DSB's
        rgba, ids = he_like(20 + i)
        grey = np.where(ids > 0, 200, 10).astype(np.uint8)
        Image.fromarray(np.dstack([grey, grey, grey, rgba[..., 3]])).save(
            keep / "images" / f"f{i}.png")
        Image.fromarray(ids).save(keep / "masks" / f"f{i}.png")
    result = finetune(FinetuneOptions(base="nuclei", data=folder, minutes=1.0, keep_skill=keep,
                                      num_threads=1, overrides={
                                          **FEW_STEPS, "patch_size": [64, 64],
                                          "data.channel_rule": "luminance-auto"}))
    card = read_model_card(result.model_path)
    story = card.training["finetune"]
    assert story["keep_skill"] == str(keep) and "mixed in to keep" in card.description
    # the kept images train (and widen the domain) but are not scored or listed as corrections
    assert sorted(card.training["split"]["train"]) == [
        "he0-train", "he1-train", "keep-f0", "keep-f1", "keep-f2"]
    assert card.domain["num_cases"] == 5 and result.val_cases == ["he0-val", "he1-val"]
    assert [i["name"] for i in story["images"]] == ["he0", "he1"]
    assert card.channel_rule == "luminance-auto"


def test_a_budget_too_short_to_train_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    """A few seconds of budget go to checking and scoring: the run warns that little is left
    to learn with, and still ends with a model (the better of the trained weights and the
    base's with the channel rule) and its figures."""
    folder = write_he_folder(tmp_path / "corrections", 2)
    with caplog.at_level("WARNING", logger="medseg.training.finetune_run"):
        result = finetune(FinetuneOptions(base="nuclei", data=folder, minutes=0.05,
                                          num_threads=1, overrides={"patch_size": [64, 64]}))
    assert any("too little to learn anything" in r.getMessage() for r in caplog.records)
    assert result.model_path.is_file() and result.after >= result.before


def test_many_images_are_fine_tuned_at_the_base_rate(tmp_path: Path) -> None:
    from medseg.training.finetune_recipe import MANY_IMAGES, finetune_config

    card = read_model_card(resolve_model("nuclei"))
    base_lr = float(card.training["config"]["lr"])

    def lr(n_train: int) -> float:
        return finetune_config(card, base_path=resolve_model("nuclei"), name="x",
                               manifest=tmp_path / "cases.json", val_cases=[],
                               run_dir=tmp_path / "run", minutes=1.0, channel_rule=None,
                               seed=0, num_threads=1, device="cpu", n_train=n_train).lr

    assert lr(MANY_IMAGES) == pytest.approx(base_lr)
    assert lr(MANY_IMAGES - 1) == pytest.approx(0.3 * base_lr)


def _wide_tiny_nuclei(tmp_path: Path) -> Path:
    """The nuclei card (instances, domain, recipe) on a tiny random network with the card's
    256 x 256 window."""
    import dataclasses

    import torch

    from medseg.model_card import save_model
    from medseg.networks import build_network, plan_network

    torch.manual_seed(0)
    card = read_model_card(resolve_model("nuclei"))
    network = plan_network(spatial_dims=2, in_channels=1, out_channels=3,
                           patch_size=[256, 256], base_filters=4, max_filters=8)
    card = dataclasses.replace(card, name="wide-tiny", network=network, roi_size=[256, 256])
    return save_model(tmp_path / "wide-tiny.safetensors", build_network(network), card)


@pytest.mark.parametrize(("seconds", "patch", "batch"),
                         [(30.0, [128, 128], None), (1e-4, [256, 256], 2)])
def test_a_slow_machine_fine_tunes_on_smaller_patches(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      seconds: float, patch: list[int],
                                                      batch: int | None) -> None:
    import medseg.training.finetune_run as finetune_run

    probed: list[tuple] = []

    def step_seconds(model_path, card_patch, batch_size, **kwargs) -> float:
        probed.append((tuple(card_patch), batch_size))
        return seconds  # a training step of the card's patch, as timed on this "machine"

    monkeypatch.setattr(finetune_run, "step_seconds", step_seconds)
    base = _wide_tiny_nuclei(tmp_path)
    folder = write_he_folder(tmp_path / "corrections", 2)
    overrides = {key: value for key, value in FEW_STEPS.items() if key != "batch_size"}
    if batch is not None:
        overrides["batch_size"] = batch
    result = finetune(FinetuneOptions(base=str(base), data=folder, minutes=1.0,
                                      num_threads=1, overrides=overrides,
                                      run_dir=tmp_path / "run"))
    # the card's window, and the batch the training runs: the recipe's or the override's
    assert probed == [((256, 256), batch or 4)]
    fit = read_model_card(result.model_path).training["finetune"]["patch"]
    assert fit["patch_size"] == patch and fit["card_patch"] == [256, 256]
    assert fit["seconds_per_step"] == round(seconds, 4)
    assert (fit["expected_steps"] < 1000) == (patch == [128, 128])
    plan = json.loads((tmp_path / "run" / "train" / "plan.json").read_text())["plan"]
    assert plan["patch_size"] == patch
    # the user is told why the patches are smaller
    assert ("trained on 128x128 patches" in result.summary()) == (patch == [128, 128])


def test_the_speed_probe_times_a_real_training_step(tmp_path: Path) -> None:
    from medseg.training.finetune_recipe import finetune_config
    from medseg.training.finetune_speed import step_seconds

    base = _wide_tiny_nuclei(tmp_path)
    seconds = step_seconds(base, [128, 128], 2, device="cpu", amp="off")
    assert 0.0 < seconds < 30.0
    # smaller patches draw as many pixels: four times the steps of the card's window
    card = read_model_card(base)

    def epochs(patch_size: list[int] | None) -> int:
        return finetune_config(card, base_path=base, name="x", manifest=tmp_path / "c.json",
                               val_cases=[], run_dir=tmp_path / "run", minutes=1.0,
                               channel_rule=None, seed=0, num_threads=1, device="cpu",
                               n_train=25, patch_size=patch_size).epochs

    assert (epochs(None), epochs([128, 128])) == (38, 150)
