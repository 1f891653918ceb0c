"""The windowed forward pass: equal to MONAI on the mirror-padded image, to a direct forward
pass when one window covers the image, and block stitching equal to whole-volume argmax."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medseg.errors import CancelledError
from medseg.inference import plan_windows, sliding_window_logits
from medseg.inference.sliding_window import _BlockPlan, run_window_grid
from medseg.inference.windows import WindowReader


def small_net(spatial_dims: int, in_channels: int = 2, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(3)
    conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(in_channels, 6, 3, padding=1), torch.nn.ReLU(),
                               conv(6, classes, 3, padding=1)).eval()


@pytest.mark.parametrize("shape,roi", [((33, 34, 35), (16, 16, 16)), ((45, 38), (16, 24))])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_equals_monai_on_reflection_padded_image(shape, roi, overlap) -> None:
    from monai.inferers import sliding_window_inference

    net = small_net(len(shape))
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(2, *shape)).astype("f4"))
    ours = sliding_window_logits(net, image, roi_size=roi, overlap=overlap, device="cpu")

    grid = plan_windows(shape, roi, overlap=overlap)
    pad = [(0, 0)] + [(b, p - n - b) for b, p, n in
                      zip(grid.pad_before, grid.padded_shape, shape, strict=True)]
    padded = torch.from_numpy(np.pad(image.numpy(), pad, mode="reflect"))
    with torch.no_grad():
        ref = sliding_window_inference(padded[None], roi, 4, net, overlap=overlap,
                                       mode="gaussian")[0]
    crop = tuple(slice(b, b + n) for b, n in zip(grid.pad_before, shape, strict=True))
    assert ours.shape == (4, *shape) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref[(slice(None), *crop)], atol=2e-6, rtol=1e-5)


def test_one_window_covering_the_image_equals_a_direct_forward_pass() -> None:
    net = small_net(3)
    image = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 16, 24, 8)).astype("f4"))
    ours = sliding_window_logits(net, image, roi_size=(16, 24, 8), margin=0, device="cpu")
    with torch.no_grad():
        direct = net(image[None])[0]
    torch.testing.assert_close(ours, direct, atol=1e-6, rtol=1e-6)


def test_block_outputs_equal_whole_volume_argmax_and_softmax() -> None:
    net = small_net(3)
    array = np.random.default_rng(2).normal(size=(2, 37, 21, 30)).astype("f4")
    grid = plan_windows(array.shape[1:], (12, 12, 12), overlap=0.5)
    reader = WindowReader(array, grid)
    with torch.inference_mode():
        out = run_window_grid(reader, net, device=torch.device("cpu"), labels=True,
                              probabilities=True, logits=True, sw_batch_size=3)
    assert out.labels is not None and out.probabilities is not None and out.logits is not None
    assert out.num_windows == grid.num_windows
    assert out.labels.dtype == np.uint8 and out.labels.shape == array.shape[1:]
    np.testing.assert_array_equal(out.labels, out.logits.argmax(0).numpy())
    np.testing.assert_allclose(out.probabilities.astype("f4"),
                               torch.softmax(out.logits, 0).numpy(), atol=1e-3)


def test_progress_and_cancel() -> None:
    net = small_net(2)
    array = np.zeros((2, 40, 40), np.float32)
    grid = plan_windows(array.shape[1:], (16, 16), overlap=0.5)
    calls: list[tuple[int, int]] = []
    with torch.inference_mode():
        run_window_grid(WindowReader(array, grid), net, device=torch.device("cpu"),
                        progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (grid.num_windows, grid.num_windows) and len(calls) == grid.num_windows
    polls = iter(range(100))
    with pytest.raises(CancelledError, match="cancelled"), torch.inference_mode():
        run_window_grid(WindowReader(array, grid), net, device=torch.device("cpu"),
                        should_cancel=lambda: next(polls) >= 3)


@pytest.mark.parametrize("shape,roi,overlap,margin,max_ratio", [
    ((512, 512, 200), (128, 128, 128), 0.25, 0, 0.5),
    ((512, 512, 200), (128, 128, 128), 0.25, None, 0.5),
    ((35, 50, 36), (40, 56, 40), 0.5, None, 1.0),
    ((45, 38), (16, 24), 0.5, None, 0.8),
])
def test_blocks_partition_the_grid_and_stay_few(shape, roi, overlap, margin, max_ratio) -> None:
    """Every padded voxel is in exactly one block; a block is emitted after the last window
    that covers it; the blocks alive at once hold far less than a one-window-deep band."""
    grid = plan_windows(shape, roi, overlap=overlap, margin=margin)
    plan = _BlockPlan(grid)
    assert sorted(plan.corners) == sorted(itertools.product(*grid.starts))
    for ax, cells in enumerate(plan.cells):  # cells tile each padded axis
        assert cells[0][0] == 0 and cells[-1][1] == grid.padded_shape[ax]
        assert all(a[1] == b[0] for a, b in zip(cells[:-1], cells[1:], strict=True))
    covered = np.zeros(grid.padded_shape, dtype=np.int32)
    live: dict[tuple[int, ...], int] = {}
    peak = 0
    for corner in plan.corners:
        for block, lo, src in plan.blocks_of(corner):
            region = tuple(slice(a + s.start, a + s.stop)
                           for a, s in zip(corner, src, strict=True))
            assert [r.start for r in region] == lo
            covered[region] += 1
            live[block] = math.prod(s.stop - s.start for s in src)
        peak = max(peak, sum(live.values()))
        for block in [b for b in live if plan.last_window[b] == corner]:
            del live[block]
    assert not live
    # each voxel summed once per window over it: the count MONAI's averaging divides by
    expected = np.ones(grid.padded_shape, dtype=np.int32)
    for ax, starts in enumerate(grid.starts):
        per_axis = np.zeros(grid.padded_shape[ax], dtype=np.int32)
        for st in starts:
            per_axis[st:st + grid.roi_size[ax]] += 1
        expected *= per_axis.reshape([-1 if a == ax else 1 for a in range(len(shape))])
    np.testing.assert_array_equal(covered, expected)
    assert peak <= max_ratio * math.prod(grid.band_shape)


@pytest.mark.parametrize("classes", [1, 2, 5, 300])
def test_argmax_channels_equals_torch_argmax_with_first_index_on_ties(classes: int) -> None:
    from medseg.inference.sliding_window import argmax_channels

    scores = torch.randn(classes, 9, 8, 7)
    scores[:, 0, 0, :] = 0.5  # ties: the first class wins, as with torch.argmax
    dtype = torch.uint8 if classes <= 256 else torch.int32
    got = argmax_channels(scores[:, :, 1:], dtype=dtype)  # a strided view, as in the band
    expected = (scores[0, :, 1:] > 0).to(dtype) if classes == 1 else \
        torch.argmax(scores[:, :, 1:], 0).to(dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected)
    if classes > 1:  # relative to class 0 (implicit zero channel): the same labels, ties too
        rel = argmax_channels(scores[1:, :, 1:] - scores[:1, :, 1:], dtype=dtype, relative=True)
        torch.testing.assert_close(rel, expected)


def test_more_than_255_classes_give_uint16_labels() -> None:
    net = small_net(2, in_channels=1, classes=300)
    array = np.random.default_rng(9).normal(size=(1, 20, 18)).astype("f4")
    with torch.inference_mode():
        out = run_window_grid(WindowReader(array, plan_windows((20, 18), (8, 8))), net,
                              device=torch.device("cpu"), logits=True)
    assert out.labels is not None and out.labels.dtype == np.uint16 and out.logits is not None
    np.testing.assert_array_equal(out.labels, out.logits.argmax(0).numpy())


def test_float16_band_agrees_with_float32() -> None:
    net = small_net(3)
    array = np.random.default_rng(12).normal(size=(2, 30, 27, 33)).astype("f4")
    grid = plan_windows(array.shape[1:], (12, 12, 12), overlap=0.5)
    outs = {}
    for dtype in (torch.float32, torch.float16):
        with torch.inference_mode():
            outs[dtype] = run_window_grid(WindowReader(array, grid), net,
                                          device=torch.device("cpu"), probabilities=True,
                                          stitch_dtype=dtype)
    full, half = outs[torch.float32], outs[torch.float16]
    assert full.probabilities is not None and half.probabilities is not None
    np.testing.assert_allclose(half.probabilities.astype("f4"),
                               full.probabilities.astype("f4"), atol=3e-3)
    assert (half.labels == full.labels).mean() > 0.995  # random weights: many near-ties


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_sums_relative_to_class_0_give_the_same_labels_and_probabilities(classes, monkeypatch
                                                                         ) -> None:
    """Without a logits output the stitcher keeps K - 1 channels (logit_c - logit_0); the labels
    and probabilities equal those of the full K-channel sums."""
    from medseg.inference import sliding_window

    net = small_net(3, classes=classes)
    array = np.random.default_rng(13).normal(size=(2, 26, 31, 23)).astype("f4")
    grid = plan_windows(array.shape[1:], (12, 12, 12), overlap=0.5)
    kept: list[int] = []
    terms = sliding_window._stitch_terms

    def spy(pred: torch.Tensor, **kwargs) -> torch.Tensor:
        out = terms(pred, **kwargs)
        kept.append(int(out.shape[0]))
        return out

    monkeypatch.setattr(sliding_window, "_stitch_terms", spy)
    with torch.inference_mode():  # float64 sums: no near-ties between the two ways of summing
        full = run_window_grid(WindowReader(array, grid), net, device=torch.device("cpu"),
                               probabilities=True, logits=True, stitch_dtype=torch.float64)
        assert set(kept) == {classes}
        kept.clear()
        rel = run_window_grid(WindowReader(array, grid), net, device=torch.device("cpu"),
                              probabilities=True, stitch_dtype=torch.float64)
    assert set(kept) == {classes - 1} and len(kept) == grid.num_windows
    assert rel.logits is None and full.logits is not None
    np.testing.assert_array_equal(rel.labels, full.labels)
    np.testing.assert_array_equal(rel.labels, full.logits.argmax(0).numpy())
    assert rel.probabilities is not None and full.probabilities is not None
    np.testing.assert_allclose(rel.probabilities.astype("f4"),
                               full.probabilities.astype("f4"), atol=1e-3)
    np.testing.assert_allclose(rel.probabilities.astype("f4").sum(0), 1.0, atol=3e-3)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("shape", [(7, 5, 3), (8, 8), (1,), (13, 1, 9)])
def test_pack_bits_round_trip(bits, shape) -> None:
    from medseg.inference.sliding_window import pack_bits, unpack_bits

    values = np.random.default_rng(bits).integers(0, 1 << bits, size=shape, dtype=np.uint8)
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(values.size * bits / 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, shape), values)


@pytest.mark.parametrize("classes", [1, 2, 3, 5, 17])
@pytest.mark.parametrize("order", ["C", "F"])
def test_packed_label_blocks_give_the_same_label_map(classes, order) -> None:
    net = small_net(3, classes=classes)
    array = np.random.default_rng(14).normal(size=(2, 27, 22, 19)).astype("f4")
    grid = plan_windows(array.shape[1:], (10, 12, 8), overlap=0.25)
    outs = []
    for pack in (False, True):
        with torch.inference_mode():
            outs.append(run_window_grid(WindowReader(array, grid), net,
                                        device=torch.device("cpu"), labels_order=order,
                                        pack_labels=pack, sw_batch_size=2))
    plain, packed = (o.labels for o in outs)
    assert plain is not None and packed is not None
    assert packed.dtype == plain.dtype == np.uint8 and packed.shape == array.shape[1:]
    assert packed.flags.f_contiguous == (order == "F")
    np.testing.assert_array_equal(packed, plain)
    if classes > 1:  # a map with several labels, so that packing had something to keep
        assert len(np.unique(plain)) >= min(classes, 3)


def test_packed_sink_holds_a_quarter_byte_per_voxel_for_3_classes() -> None:
    from medseg.inference.sliding_window import _Sink

    grid = plan_windows((20, 20, 20), (20, 20, 20), overlap=0.25, margin=0)
    sink = _Sink(grid, 3, labels=True, probabilities=False, logits=False, pack=True)
    scores = torch.from_numpy(np.random.default_rng(15).normal(size=(2, 20, 20, 20)))
    sink.emit([0, 0, 0], scores, None)  # relative sums: 2 channels for 3 classes
    assert sink.out.labels is None  # not resident while windows run
    assert sum(p.nbytes for _, _, p in sink.packed) == math.ceil(20 ** 3 / 4)
    labels = sink.finish().labels
    full = torch.cat([torch.zeros(1, 20, 20, 20, dtype=scores.dtype), scores])
    np.testing.assert_array_equal(labels, full.argmax(0).numpy())
    assert not sink.packed


def test_no_labels_asked_none_computed_or_kept() -> None:
    """Probabilities only (the engine's path when it resamples back): no label blocks are
    packed or kept along the way."""
    from medseg.inference.sliding_window import _Sink

    grid = plan_windows((12, 12, 12), (12, 12, 12), overlap=0.25, margin=0)
    sink = _Sink(grid, 3, labels=False, probabilities=True, logits=False, pack=True)
    scores = torch.from_numpy(np.random.default_rng(16).normal(size=(2, 12, 12, 12)))
    sink.emit([0, 0, 0], scores, torch.ones((1, 12, 12, 12), dtype=scores.dtype))
    assert sink.packed == [] and sink.bits == 0
    out = sink.finish()
    assert out.labels is None and out.probabilities is not None
