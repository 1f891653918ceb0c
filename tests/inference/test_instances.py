"""Instance maps from class probabilities: interior-component seeds and distance seeds."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference.instances import instances_from_classes


def _two_touching_discs(shape=(60, 80), radius=12, centres=((30, 28), (30, 50))):
    """Probabilities of a model that saw two touching nuclei as one interior blob (no
    boundary predicted between them): background / interior / boundary."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    discs = [(yy - r) ** 2 + (xx - c) ** 2 <= radius**2 for r, c in centres]
    union = discs[0] | discs[1]
    p = np.zeros((3, *shape), np.float32)
    p[0] = np.where(union, 0.05, 0.95)
    p[1] = np.where(union, 0.9, 0.03)
    p[2] = 1.0 - p[0] - p[1]
    return p, discs


def test_distance_seeds_split_touching_interiors_the_interior_seeds_merge() -> None:
    p, discs = _two_touching_discs()
    labels = p.argmax(0).astype(np.uint8)
    merged = instances_from_classes(labels, p, {"method": "boundary", "seed_threshold": 0.5,
                                                "min_size": 8})
    assert merged.max() == 1  # one interior component: one object
    split = instances_from_classes(labels, p, {"method": "boundary", "seeds": "distance",
                                               "seed_threshold": 0.5, "h": 0.5, "sigma": 1.0,
                                               "min_size": 8})
    assert split.max() == 2 and split.dtype == np.uint16
    for disc in discs:  # each object is mostly one disc
        ids, counts = np.unique(split[disc], return_counts=True)
        assert counts.max() / disc.sum() > 0.85 and ids[np.argmax(counts)] > 0
    assert np.all((split > 0) == (labels > 0))  # every foreground pixel is in an object


def _with_centres(p: np.ndarray, centres, radius: float) -> np.ndarray:
    """The 4-class probabilities of a ``"centre"`` model from :func:`_two_touching_discs`'s:
    within ``radius`` of each given centre, most of the interior's probability moves to
    class 3 (centre)."""
    yy, xx = np.mgrid[: p.shape[1], : p.shape[2]]
    core = np.zeros(p.shape[1:], bool)
    for r, c in centres:
        core |= (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
    out = np.zeros((4, *p.shape[1:]), np.float32)
    out[:3] = p
    out[3] = np.where(core, 0.8 * p[1], 0.0)
    out[1] -= out[3]
    return out


def test_centre_seeds_split_touching_interiors_one_object_per_centre() -> None:
    p3, discs = _two_touching_discs()
    p = _with_centres(p3, ((30, 28), (30, 50)), 6)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-6)
    labels = p.argmax(0).astype(np.uint8)
    assert set(np.unique(labels).tolist()) == {0, 1, 3}
    spec = {"method": "centre", "seed_threshold": 0.5, "min_size": 8}
    for probs in (p, None):  # with the probabilities, and from the argmax alone
        got = instances_from_classes(labels, probs, spec)
        assert got.max() == 2 and got.dtype == np.uint16
        for disc in discs:  # each object is mostly one disc
            ids, counts = np.unique(got[disc], return_counts=True)
            assert counts.max() / disc.sum() > 0.85 and ids[np.argmax(counts)] > 0
        assert np.all((got > 0) == (labels > 0))  # every foreground pixel is in an object
    # without the centres (the 3-class probabilities the centres were carved from), the
    # boundary method's interior seeds see one interior: one object
    merged = instances_from_classes(p3.argmax(0).astype(np.uint8), p3,
                                    {"method": "boundary", "seed_threshold": 0.5})
    assert merged.max() == 1


@pytest.mark.parametrize("found", [(30, 18), (30, 60)])
def test_centre_method_keeps_an_interior_whose_centre_was_missed(found) -> None:
    """Two separate discs; the model found the centre of one only: both are objects (either
    one first in scan order, so the centreless disc's seed cannot reuse the centre's id)."""
    p3, discs = _two_touching_discs(centres=((30, 18), (30, 60)), radius=10)
    p = _with_centres(p3, (found,), 5)
    got = instances_from_classes(p.argmax(0).astype(np.uint8), p,
                                 {"method": "centre", "centre_threshold": 0.5, "min_size": 8})
    assert got.max() == 2
    for disc in discs:  # each disc is one whole object
        assert len(np.unique(got[disc])) == 1 and got[disc][0] > 0
    assert got[30, 18] != got[30, 60]


def test_distance_seeds_keep_one_round_object_whole() -> None:
    p, (disc, _) = _two_touching_discs(centres=((30, 30), (30, 30)))
    labels = p.argmax(0).astype(np.uint8)
    ids = instances_from_classes(labels, p, {"method": "boundary", "seeds": "distance",
                                             "seed_threshold": 0.5, "min_size": 8})
    assert ids.max() == 1 and np.array_equal(ids > 0, disc)


def _nucleus_in_glow(shape=(60, 80)):
    """A confident round nucleus (radius 8) on a wide patch of glow that the model half calls
    object (foreground 0.6, a little interior), plus a separate weak blob (foreground 0.65)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    nucleus = (yy - 30) ** 2 + (xx - 20) ** 2 <= 8**2
    rim = ((yy - 30) ** 2 + (xx - 20) ** 2 <= 10**2) & ~nucleus
    glow = (xx < 45) & ~nucleus & ~rim
    blob = (yy - 9) ** 2 + (xx - 65) ** 2 <= 7**2  # above the nucleus: first in raster order
    p = np.zeros((3, *shape), np.float32)
    p[0] = 0.97
    p[0][glow] = 0.4
    p[1][glow] = 0.1
    p[0][rim], p[1][rim] = 0.02, 0.08
    p[0][nucleus], p[1][nucleus] = 0.01, 0.97
    p[0][blob], p[1][blob] = 0.35, 0.6
    p[2] = 1.0 - p[0] - p[1]
    return p, nucleus | rim, blob


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_max_grow_stops_an_object_at_its_rim_instead_of_flooding_the_glow() -> None:
    p, true_object, _ = _nucleus_in_glow()
    labels = p.argmax(0).astype(np.uint8)
    spec = {"method": "boundary", "seeds": "distance", "seed_threshold": 0.5, "min_size": 8}
    flooded = instances_from_classes(labels, p, spec)
    first = flooded == flooded[30, 20]
    assert first.sum() > 3 * true_object.sum()  # the seed grew over the whole glow
    kept = instances_from_classes(labels, p, {**spec, "max_grow": 2})
    first = kept == kept[30, 20]
    assert kept[30, 20] > 0 and _iou(first, true_object) > 0.9  # nucleus 8 px + 2 px rim


def test_min_score_drops_weak_objects_and_keeps_confident_ones() -> None:
    p, true_object, blob = _nucleus_in_glow()
    labels = p.argmax(0).astype(np.uint8)
    spec = {"method": "boundary", "seed_threshold": 0.5, "min_size": 8, "max_grow": 2}
    both = instances_from_classes(labels, p, spec)
    assert both.max() == 2 and both[9, 65] == 1  # the weak blob is object 1 (score 0.65)
    strong = instances_from_classes(labels, p, {**spec, "min_score": 0.85})
    assert strong[9, 65] == 0 and strong[30, 20] == 1 and strong.max() == 1  # renumbered
    assert _iou(strong > 0, true_object) > 0.9  # the nucleus scores about 0.98


def test_object_diameter_zooms_a_magnified_image_back_to_the_size_the_model_learned() -> None:
    """A sample image shown at 2x magnification (nuclei twice as wide): on native pixels
    the model splits and misses nuclei; told their diameter it zooms the image by 1/2, and
    the objects come back on the input's 512x512 pixels as good as at 1x."""
    from PIL import Image

    from medseg.errors import ModelError
    from medseg.inference import InferenceOptions, Segmenter
    from medseg.io import read_image
    from medseg.metrics import pooled_scores
    from medseg.samples import nuclei_samples

    png, mask = nuclei_samples()[0]
    image, truth = read_image(png), np.asarray(Image.open(mask)).T  # (x, y) as read
    big = image.with_array(np.repeat(np.repeat(image.array, 2, 1), 2, 2))
    big_truth = np.repeat(np.repeat(truth, 2, 0), 2, 1)
    native = Segmenter.from_file("nuclei", device="cpu")
    trained = native.card.domain["object_diameter"]
    assert 15 < trained < 30  # DSB2018: median nucleus area about 330 px^2

    def ap(options: InferenceOptions, img, t) -> tuple[float, tuple[int, ...]]:  # noqa: ANN001
        p = Segmenter(native.model, native.card, options).predict(img)
        return pooled_scores([(t, p.labels.array[0])])["ap50_pooled"], p.labels.array.shape

    plain = native.inference_options
    ap_1x, _ = ap(plain, image, truth)
    ap_2x, _ = ap(plain, big, big_truth)
    ap_zoomed, shape = ap(plain.replace(object_diameter=2 * trained), big, big_truth)
    assert shape == (1, 512, 512)
    assert ap_zoomed >= ap_2x + 0.05 and ap_zoomed >= ap_1x - 0.02
    # zooming out of real (not repeated) pixels, odd sizes: the model grid spans the image,
    # so the last rows and columns get probabilities back like every other pixel
    odd = image.with_array(image.array[:, :255, :253])
    out = Segmenter(native.model, native.card, plain.replace(object_diameter=2 * trained)
                    ).predict(odd, return_probabilities=True)
    total = out.probabilities.array.astype(np.float32).sum(0)
    assert out.labels.array.shape == (1, 255, 253)
    np.testing.assert_allclose(total, 1.0, atol=0.01)
    # the prediction says which grid the network saw: half the pixels, spanning the image
    shape = [round(255 / 2), round(253 / 2)]
    assert out.model_grid["shape"] == shape
    np.testing.assert_allclose(out.model_grid["spacing"],
                               [(n - 1) / (m - 1) for n, m in zip((255, 253), shape, strict=True)])
    assert native.predict(odd).model_grid is None  # native pixels: the input's own grid
    # the model's own diameter is no zoom at all
    same = Segmenter(native.model, native.card, plain.replace(object_diameter=trained))
    np.testing.assert_array_equal(same.predict(image).labels.array,
                                  native.predict(image).labels.array)
    # a model that records no object diameter refuses the option when it is loaded
    with pytest.raises(ModelError, match="object diameter"):
        Segmenter.from_file("isbi2012", device="cpu", object_diameter=20.0)
    # and an instance model refuses a class-map clean-up (it would cut holes in its classes)
    for clean in ({"keep_largest": True}, {"min_size_ml": 0.1}):
        with pytest.raises(ModelError, match="separates objects"):
            Segmenter(native.model, native.card, plain.replace(**clean))


def test_a_resumed_batch_redoes_cases_made_with_another_object_diameter(tmp_path) -> None:
    """Resume counts a case as done only if it was made with the same object diameter: a run
    with --diameter after one without redoes the case, and a repeat of it does not."""
    from medseg.inference import InferenceOptions
    from medseg.inference.batch import run_batch
    from medseg.samples import nuclei_samples

    png, _ = nuclei_samples()[0]
    out = tmp_path / "out"

    def run(diameter: float | None):  # noqa: ANN202 - BatchSummary
        return run_batch([png], "nuclei", out,
                         inference=InferenceOptions(device="cpu", object_diameter=diameter))

    first = run(None)
    assert first.completed == 1 and first.records[0].geometry["model_grid"] is None
    assert run(None).already_done == 1
    zoomed = run(41.5)
    assert zoomed.completed == 1
    # the record names the grid the network ran on: 256 px zoomed by trained / 41.5
    from medseg.model_card import read_model_card
    from medseg.models import resolve_model

    trained = read_model_card(resolve_model("nuclei")).object_diameter_px
    assert zoomed.records[0].geometry["model_grid"]["shape"] == [round(256 * trained / 41.5)] * 2
    assert run(41.5).already_done == 1
    assert run("auto").completed == 1 and run("auto").already_done == 1
    # a model whose card says "auto": a resumed run without --diameter finds its cases done
    from medseg.model_card import load_model, save_model

    network, card = load_model(resolve_model("nuclei"))
    card.instances = {**card.instances, "object_diameter": "auto"}
    sized = save_model(tmp_path / "sized.safetensors", network, card)
    first = run_batch([png], sized, tmp_path / "sized",
                      inference=InferenceOptions(device="cpu"))
    assert first.records[0].geometry["model_grid"]["object_diameter"]["mode"] == "auto"
    again = run_batch([png], sized, tmp_path / "sized", inference=InferenceOptions(device="cpu"))
    assert again.already_done == 1


def test_a_zoom_out_scales_the_cards_pixel_settings_and_a_zoom_in_keeps_them(monkeypatch) -> None:
    """Objects are separated on the input's pixels: an image zoomed out 2x for the model gets
    the card's lengths doubled and its minimum area times four; an image zoomed in keeps the
    card's settings (sub-pixel h or max_grow would pick up pixel noise)."""
    from medseg.inference import Segmenter, engine
    from medseg.io import read_image
    from medseg.samples import nuclei_samples

    seen = []
    real = engine.instances_from_classes

    def spy(labels, probabilities, spec):  # noqa: ANN001, ANN202
        seen.append(spec)
        return real(labels, probabilities, spec)

    monkeypatch.setattr(engine, "instances_from_classes", spy)
    native = Segmenter.from_file("nuclei", device="cpu")
    card = native.card.instances
    trained = native.card.object_diameter_px
    image = read_image(nuclei_samples()[0][0])
    used = [Segmenter(native.model, native.card,
                      native.inference_options.replace(object_diameter=diameter)
                      ).predict(image).instance_settings
            for diameter in (2 * trained, trained / 1.5)]
    out, into = seen
    assert used == seen  # the prediction says which settings made its objects
    # input pixels per model pixel (~2): the zoomed grid spans the image exactly
    scale = np.mean([(n - 1) / (round(n / 2) - 1) for n in image.spatial_shape])
    assert out["max_grow"] == pytest.approx(card["max_grow"] * scale)
    assert out["h"] == pytest.approx(card["h"] * scale)
    assert out["min_size"] == round(card["min_size"] * scale**2)
    assert into == card


def test_auto_object_diameter_finds_the_magnification_itself() -> None:
    """``object_diameter="auto"``: a first pass at native pixels estimates the nuclei's
    diameter from the objects' union; the sample shown at 2x is then zoomed back about as a
    user giving the diameter would, and the sample at 1x is left as it is (one pass)."""
    from PIL import Image

    from medseg.errors import ModelError
    from medseg.inference import Segmenter
    from medseg.io import read_image
    from medseg.metrics import pooled_scores
    from medseg.model_card import ModelCard
    from medseg.samples import nuclei_samples

    png, mask = nuclei_samples()[0]
    image, truth = read_image(png), np.asarray(Image.open(mask)).T
    big = image.with_array(np.repeat(np.repeat(image.array, 2, 1), 2, 2))
    big_truth = np.repeat(np.repeat(truth, 2, 0), 2, 1)
    native = Segmenter.from_file("nuclei", device="cpu")
    trained = native.card.object_diameter_px
    auto = Segmenter(native.model, native.card,
                     native.inference_options.replace(object_diameter="auto"))

    def ap(p) -> float:  # noqa: ANN001
        return pooled_scores([(p[1], p[0].labels.array[0])])["ap50_pooled"]

    on_big = auto.predict(big)
    sized = on_big.model_grid["object_diameter"]
    assert sized["mode"] == "auto" and sized["trained"] == round(trained, 2)
    assert 1.5 * trained < sized["used"] < 2.6 * trained  # truly 2x
    assert on_big.labels.array.shape == (1, 512, 512)
    assert ap((on_big, big_truth)) >= ap((native.predict(big), big_truth)) + 0.05
    on_1x = auto.predict(image)
    assert len(on_1x.model_grid["object_diameter"]["estimates"]) == 1
    assert on_1x.model_grid["object_diameter"]["used"] == round(trained, 2)
    np.testing.assert_array_equal(on_1x.labels.array, native.predict(image).labels.array)
    # a card can make it the default (a model fine-tuned at one object scale does)
    card = ModelCard.from_dict({**native.card.to_dict(),
                                "instances": {**native.card.instances,
                                              "object_diameter": "auto"}})
    assert Segmenter(native.model, card, native.inference_options).object_diameter == "auto"
    with pytest.raises(ModelError, match="object_diameter"):
        ModelCard.from_dict({**native.card.to_dict(),
                             "instances": {**native.card.instances, "object_diameter": 20}})


def test_the_models_own_diameter_on_a_stack_is_no_zoom() -> None:
    """A 2D model over a stack runs each slice at native pixels: its own diameter (what napari
    passes for "native" on a model whose card says auto) is accepted, another is refused."""
    from medseg.errors import ModelError
    from medseg.inference import Segmenter
    from medseg.io import ImageMeta, MedImage, read_image
    from medseg.samples import nuclei_samples

    png, _ = nuclei_samples()[0]
    plane = read_image(png).array[:, :64, :64]
    stack = MedImage(np.stack([plane, plane], axis=-1), ImageMeta.identity(3))
    native = Segmenter.from_file("nuclei", device="cpu")
    trained = native.card.object_diameter_px
    same = Segmenter(native.model, native.card,
                     native.inference_options.replace(object_diameter=trained))
    np.testing.assert_array_equal(same.predict(stack).labels.array,
                                  native.predict(stack).labels.array)
    other = Segmenter(native.model, native.card,
                      native.inference_options.replace(object_diameter=2 * trained))
    with pytest.raises(ModelError, match="zooms 2D images"):
        other.predict(stack)
