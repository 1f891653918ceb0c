"""Channel rules: how a colour (or grey) image becomes the channel(s) a model takes.

A model trained on one-channel images (fluorescence nuclei: bright nuclei on a dark background)
meets RGB(A) images (H&E: dark purple nuclei on a bright background). A rule, written in the
model card (``ModelCard.channel_rule``) when the model is trained or fine-tuned, turns every
input into one channel the same way in training and at inference:

* ``luminance``: ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (alpha ignored; a grey
  image is its own luminance);
* ``red``, ``green``, ``blue``: that colour channel (a grey image is its own channel);
* any of them with ``-inverted`` (``luminance-inverted``): the same, turned into its negative
  (``255 - v`` for 8-bit data, ``65535 - v`` for 16-bit, ``max - v`` for others), so dark
  objects on a bright background look like bright objects on a dark one;
* ``luminance-auto``: the luminance, turned into its negative when the image's median lies in
  the upper half of its 1st-99.8th percentile range (a bright background: H&E, brightfield),
  kept as it is otherwise (a dark background: fluorescence). Each image is judged on its own,
  so a model fine-tuned on H&E with this rule still sees fluorescence images as before.
* ``rgb-auto``: three channels, R, G and B (a grey image repeated three times), all turned into
  their negative when the luminance has a bright background (as ``luminance-auto`` judges
  it). A one-channel model fine-tuned with it first has its input layer widened so that it
  sees ``luminance-auto`` (:func:`widen_input_weights`), then learns from the colours.
"""

from __future__ import annotations

import numpy as np

from medseg.errors import ModelError

SOURCES = ("luminance", "red", "green", "blue")
CHANNEL_RULES = (*(f"{s}{inv}" for s in SOURCES for inv in ("", "-inverted")),
                 "luminance-auto", "rgb-auto")
#: ``luminance-auto`` inverts an image whose median sits above this fraction of its range.
AUTO_MIDPOINT = 0.5
_AUTO_SAMPLE = 1_000_000
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_channel_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`CHANNEL_RULES`, else a ``ModelError`` naming them."""
    if rule not in CHANNEL_RULES:
        raise ModelError(f"unknown channel rule {rule!r} (one of {', '.join(CHANNEL_RULES)})")
    return rule


def rule_channels(rule: str) -> int:
    """How many channels ``rule`` makes (3 for ``rgb-auto``, else 1)."""
    return 3 if check_channel_rule(rule) == "rgb-auto" else 1


def apply_channel_rule(array: np.ndarray, rule: str) -> np.ndarray:
    """The channel(s) ``(rule_channels(rule), *spatial)`` float32 that ``rule`` makes of
    ``array`` ``(C, *spatial)``.

    A grey image (one channel) or a colour image (3 channels, or 4 with alpha) is accepted.

    Examples:
        >>> rgb = np.array([[[200]], [[100]], [[50]]], dtype=np.uint8)
        >>> apply_channel_rule(rgb, "green").tolist()
        [[[100.0]]]
        >>> apply_channel_rule(rgb, "green-inverted").tolist()
        [[[155.0]]]
        >>> round(float(apply_channel_rule(rgb, "luminance")[0, 0, 0]), 1)
        124.2
        >>> apply_channel_rule(np.array([[[7]]], dtype=np.uint8), "rgb-auto").ravel().tolist()
        [7.0, 7.0, 7.0]
    """
    check_channel_rule(rule)
    source, _, inverted = rule.partition("-")
    channels = array.shape[0]
    if channels not in (1, 3, 4):
        raise ModelError(f"channel rule {rule!r} takes a grey or RGB(A) image, this one has "
                         f"{channels} channels")
    if source == "rgb":  # three channels; the luminance judges the background
        out = np.asarray(np.repeat(array, 3, 0) if channels == 1 else array[:3], np.float32)
        judged = _luminance(array)
    else:
        if channels == 1 or source == "luminance":
            out = _luminance(array)
        else:
            out = np.asarray(array[SOURCES.index(source) - 1: SOURCES.index(source)],
                             dtype=np.float32)
        judged = out
    if inverted == "inverted" or (inverted == "auto" and bright_background(judged)):
        out = _top(array) - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _luminance(array: np.ndarray) -> np.ndarray:
    """``(1, *spatial)`` float32: the luma of a colour image, a grey image as it is."""
    if array.shape[0] == 1:
        return np.asarray(array, dtype=np.float32)
    return np.tensordot(_LUMA, np.asarray(array[:3], dtype=np.float32), axes=1)[None]


def bright_background(channel: np.ndarray) -> bool:
    """Whether the median of ``channel`` lies in the upper half of its 1st-99.8th percentile
    range (judged on at most a million evenly spaced values).

    Examples:
        >>> dark = np.zeros((1, 10, 10)); dark[0, :2] = 200
        >>> bright_background(dark), bright_background(200 - dark)
        (False, True)
    """
    values = np.asarray(channel, dtype=np.float32).ravel()
    values = values[:: max(1, values.size // _AUTO_SAMPLE)]
    low, median, high = np.percentile(values, [1.0, 50.0, 99.8])
    return bool(high > low and (median - low) / (high - low) > AUTO_MIDPOINT)


def _top(array: np.ndarray) -> float:
    """The value a negative is taken from: the integer type's maximum for 8- and 16-bit data,
    else the image's own maximum."""
    if np.issubdtype(array.dtype, np.integer) and np.iinfo(array.dtype).bits <= 16:
        return float(np.iinfo(array.dtype).max)
    return float(np.max(array)) if array.size else 0.0


def widen_input_weights(weight: np.ndarray) -> np.ndarray:
    """A one-channel network's first convolution ``(out, 1, *kernel)`` widened to take the
    three channels of ``rgb-auto``: each channel gets the weights times its luma coefficient,
    so on an image the widened network computes what the one-channel network computes on
    the ``luminance-auto`` channel (the same sum of R, G and B; with a per-channel
    normalisation, nearly: the channels' ranges differ a little).

    Examples:
        >>> w = np.ones((2, 1, 3, 3), np.float32)
        >>> widen_input_weights(w).shape, round(float(widen_input_weights(w)[0, :, 0, 0].sum()), 6)
        ((2, 3, 3, 3), 1.0)
    """
    if weight.ndim < 3 or weight.shape[1] != 1:
        raise ModelError(f"only a one-channel input layer can be widened, got {weight.shape}")
    shape = [1, 3] + [1] * (weight.ndim - 2)
    return (np.asarray(weight, np.float32) * _LUMA.reshape(shape)).astype(weight.dtype)
