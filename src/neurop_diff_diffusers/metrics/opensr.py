"""An OpenSR-test-compatible mode of the trust metrics: opensr-test 1.3.3's distance (the normalised difference
``|x - y| / |x + y|``), its reported figures (mean softmin probabilities), its 16 px border crop and its synthesis
baseline (the LR upsampled bilinearly after histogram matching and sub-pixel alignment), computed with this package's
own code from what opensr-test computes. The default mode ([`~neurop_diff_diffusers.metrics.trust`]) differs in those
five places; its docstring lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .trust import (
    CORRECTNESS_LAMBDA,
    CORRECTNESS_TEMPERATURE,
    CorrectnessResult,
    as_chw,
    check_same_shape,
    classify_pixels,
)

#: Border (HR pixels) that OpenSR-test crops from every side of the SR and HR (``border // scale`` from the LR).
OPENSR_BORDER = 16
#: Upsampling factor of OpenSR-test's sub-pixel phase correlation (1/50 px).
OPENSR_UPSAMPLE_FACTOR = 50
#: Largest shift (pixels) OpenSR-test's alignment accepts; a larger one is not applied and the spatial error is NaN.
OPENSR_MAX_TRANSLATION = 5.0
_NORMALISED_DIFFERENCE_EPS = 1e-8


def _resize_bilinear(image: np.ndarray, scale_factor: float) -> np.ndarray:
    """``(C, H, W)`` resized by `scale_factor` with torch's antialiased bilinear interpolation (float64)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None]
    resized = torch.nn.functional.interpolate(tensor, scale_factor=scale_factor, mode="bilinear", antialias=True)
    return resized[0].numpy()


def match_histograms(source: Any, template: Any) -> np.ndarray:
    """Each channel of `source` mapped so that its values follow the distribution of `template`'s channel.

    Exact quantile mapping: a value of `source` whose empirical CDF (share of values at or below it) is ``q`` becomes
    the value of `template` at quantile ``q``, interpolated linearly between `template`'s distinct values (the
    classic algorithm, as in scikit-image's ``match_histograms`` that OpenSR-test calls).

    Args:
        source (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` floats.
        template (`np.ndarray` or `torch.Tensor`): ``(C, h, w)`` floats, the same channels (any size).

    Returns:
        `np.ndarray`: ``(C, H, W)`` float64.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.opensr import match_histograms
        >>> match_histograms(np.array([[[0.1, 0.3, 0.2, 0.4]]]), np.array([[[1.0, 2.0, 3.0, 4.0]]])).tolist()
        [[[1.0, 3.0, 2.0, 4.0]]]
    """
    source, template = as_chw(source, "source"), as_chw(template, "template")
    if source.shape[0] != template.shape[0]:
        raise ValueError(
            f"`source` and `template` must have the same channels, got {source.shape} and {template.shape}."
        )
    matched = np.empty_like(source)
    for c in range(source.shape[0]):
        values, inverse, counts = np.unique(source[c].ravel(), return_inverse=True, return_counts=True)
        target_values, target_counts = np.unique(template[c].ravel(), return_counts=True)
        quantiles = np.cumsum(counts) / source[c].size
        target_quantiles = np.cumsum(target_counts) / template[c].size
        matched[c] = np.interp(quantiles, target_quantiles, target_values)[inverse].reshape(source[c].shape)
    return matched


def _upsampled_correlation(product: np.ndarray, size: int, factor: int, offsets: np.ndarray) -> np.ndarray:
    """The inverse DFT of `product` on a ``size x size`` grid of 1/`factor` px steps starting at ``-offsets``
    (a matrix-multiply DFT: Guizar-Sicairos, Thurman and Fienup, Opt. Lett. 33, 2008)."""
    rows, cols = product.shape
    grid = np.arange(size)
    kernel_y = np.exp(-2j * np.pi * np.outer(grid - offsets[0], np.fft.fftfreq(rows, factor)))
    kernel_x = np.exp(-2j * np.pi * np.outer(np.fft.fftfreq(cols, factor), grid - offsets[1]))
    return kernel_y @ product @ kernel_x


def subpixel_shift(reference: np.ndarray, moving: np.ndarray, upsample_factor: int = OPENSR_UPSAMPLE_FACTOR):
    """The shift ``(dy, dx)`` that registers `moving` onto `reference` (2-D arrays), to 1/`upsample_factor` px.

    Phase correlation (the cross-power spectrum normalised to unit magnitude): its integer peak, then the peak of
    the correlation upsampled by a matrix-multiply DFT on a 1.5 px window around it. ``moving`` shifted by
    ``(dy, dx)`` matches ``reference``.

    Args:
        reference (`np.ndarray`): ``(H, W)``.
        moving (`np.ndarray`): ``(H, W)``.
        upsample_factor (`int`, defaults to 50): the precision, ``1 / upsample_factor`` px.

    Returns:
        `tuple[float, float]`: ``(dy, dx)``.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.opensr import subpixel_shift
        >>> x = np.random.default_rng(0).random((32, 32))
        >>> [float(v) for v in subpixel_shift(x, np.roll(x, (2, -3), axis=(0, 1)))]
        [-2.0, 3.0]
    """
    product = np.fft.fft2(reference) * np.conj(np.fft.fft2(moving))
    product /= np.maximum(np.abs(product), 100 * np.finfo(product.real.dtype).eps)
    correlation = np.fft.ifft2(product)
    shape = np.array(product.shape)
    peak = np.array(np.unravel_index(int(np.argmax(np.abs(correlation))), correlation.shape), dtype=np.float64)
    peak[peak > np.fix(shape / 2)] -= shape[peak > np.fix(shape / 2)]
    if upsample_factor > 1:
        peak = np.round(peak * upsample_factor) / upsample_factor
        size = int(np.ceil(upsample_factor * 1.5))
        centre = np.fix(size / 2.0)
        upsampled = np.conj(
            _upsampled_correlation(np.conj(product), size, upsample_factor, centre - peak * upsample_factor)
        )
        fine = np.array(np.unravel_index(int(np.argmax(np.abs(upsampled))), upsampled.shape), dtype=np.float64)
        peak = peak + (fine - centre) / upsample_factor
    peak[shape == 1] = 0.0
    return float(peak[0]), float(peak[1])


def translate_bilinear(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``(C, H, W)`` moved by ``(dy, dx)``: ``out[y, x] = image[y - dy, x - dx]``, bilinear, borders replicated.

    The warp OpenSR-test's alignment applies (OpenCV's ``warpAffine``, linear, replicated borders), computed in
    float32 at the exact sub-pixel position, as the OpenCV build it was checked against (5.1) does (older builds
    round the position to 1/32 px, which moves the result by up to 1/64 px).

    Args:
        image (`np.ndarray`): ``(C, H, W)``.
        dy (`float`): the shift down, in pixels.
        dx (`float`): the shift right.

    Returns:
        `np.ndarray`: ``(C, H, W)``, the dtype of `image`.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.opensr import translate_bilinear
        >>> translate_bilinear(np.array([[[0.0, 1.0, 2.0, 3.0]]]), 0.0, 1.0).tolist()
        [[[0.0, 0.0, 1.0, 2.0]]]
    """
    height, width = image.shape[-2:]

    def axis(offset: float, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.arange(count, dtype=np.float32) - np.float32(offset)
        start = np.floor(position)
        fraction = (position - start).astype(np.float32)
        start = start.astype(np.int64)
        return np.clip(start, 0, count - 1), np.clip(start + 1, 0, count - 1), fraction

    y0, y1, fy = axis(dy, height)
    x0, x1, fx = axis(dx, width)
    one = np.float32(1)
    source = image.astype(np.float32)
    top = source[:, y0][:, :, x0] * (one - fx) + source[:, y0][:, :, x1] * fx
    bottom = source[:, y1][:, :, x0] * (one - fx) + source[:, y1][:, :, x1] * fx
    out = top * (one - fy)[:, None] + bottom * fy[:, None]
    return out.astype(image.dtype)


def _align(moving: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """OpenSR-test's alignment: the shift of the channel means, applied to `moving` unless longer than
    [`OPENSR_MAX_TRANSLATION`]; returns the aligned image and the shift's length (NaN when refused)."""
    dy, dx = subpixel_shift(reference.mean(axis=0), moving.mean(axis=0))
    dy32, dx32 = np.float32(dy), np.float32(dx)
    length = float(np.sqrt(dx32**2 + dy32**2))
    if length > OPENSR_MAX_TRANSLATION:
        return translate_bilinear(moving, 0.0, 0.0), math.nan
    return translate_bilinear(moving, dy32, dx32), length


def _crop(image: np.ndarray, border: int) -> np.ndarray:
    return image[:, border:-border, border:-border] if border > 0 else image


def _normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.abs(a - b) / np.abs(a + b + _NORMALISED_DIFFERENCE_EPS)).mean(axis=0)


@dataclass
class OpenSRTestResult:
    """The output of [`opensr_test_metrics`], OpenSR-test 1.3.3's figures (``Metrics().compute(lr, sr, hr)``).

    Args:
        reflectance (`float`): mean ``|LR - down(SR)|`` (channel mean, then pixel mean), ``down`` = antialiased
            bilinear.
        spectral (`float`): mean spectral angle (degrees) between LR and ``down(SR)``.
        spatial (`float`): length of the shift between LR and ``down(SR)`` (LR pixels; NaN beyond 5).
        synthesis (`float`): mean L1 between the harmonised SR and the bilinear upsampling of the LR.
        correctness ([`CorrectnessResult`]): the classification (normalised-difference distance, union mask with
            ``t`` = the ``int(0.75 n)``-th smallest reference distance); its ``mean_probabilities`` are
            OpenSR-test's ``im_metric`` / ``om_metric`` / ``ha_metric``.
    """

    reflectance: float
    spectral: float
    spatial: float
    synthesis: float
    correctness: CorrectnessResult

    def as_dict(self) -> dict[str, float | None]:
        """OpenSR-test's ``compute`` keys: ``reflectance``, ``spectral``, ``spatial``, ``synthesis``, ``ha_metric``,
        ``om_metric``, ``im_metric``."""
        p = self.correctness.mean_probabilities
        return {
            "reflectance": self.reflectance,
            "spectral": self.spectral,
            "spatial": self.spatial,
            "synthesis": self.synthesis,
            "ha_metric": p.get("hallucination"),
            "om_metric": p.get("omission"),
            "im_metric": p.get("improvement"),
        }


def opensr_test_metrics(
    lr: Any,
    sr: Any,
    hr: Any,
    *,
    border: int = OPENSR_BORDER,
    harmonize: bool = True,
) -> OpenSRTestResult:
    """The trust metrics as OpenSR-test 1.3.3 computes them with its defaults (written from what it computes).

    The differences from this module's default mode ([`trust_metrics`]): the SR, HR (and LR) lose a ``border`` px
    frame; the SR is *harmonised* before synthesis and correctness (its histogram matched to the HR's per channel,
    [`match_histograms`], then shifted onto the HR by sub-pixel phase correlation, [`subpixel_shift`] /
    [`translate_bilinear`], unless the shift exceeds 5 px); the baseline is the LR upsampled *bilinearly*
    (antialiased), the output downsampled bilinearly for consistency; the correctness distance is the normalised
    difference ``mean_c |x - y| / |x + y + 1e-8|`` (not L1); and the reported figure is each class's softmin
    probability averaged over the classified pixels (not the share of pixels in each class). The scale must be an
    integer.

    Args:
        lr (`np.ndarray` or `torch.Tensor`): ``(C, h, w)`` floats.
        sr (`np.ndarray` or `torch.Tensor`): ``(C, s h, s w)``, ``s`` an integer.
        hr (`np.ndarray` or `torch.Tensor`): the same shape as `sr`.
        border (`int`, defaults to 16): the frame cropped from the SR and HR (``border // s`` from the LR).
        harmonize (`bool`, defaults to `True`): histogram matching and alignment (OpenSR-test's
            ``harm_apply_spectral`` and ``harm_apply_spatial``).

    Returns:
        [`OpenSRTestResult`].

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.opensr import opensr_test_metrics
        >>> rng = np.random.default_rng(0)
        >>> hr = rng.random((3, 64, 64))
        >>> lr = hr.reshape(3, 16, 4, 16, 4).mean(axis=(2, 4))
        >>> result = opensr_test_metrics(lr, hr, hr)
        >>> result.correctness.mean_probabilities["improvement"] > 0.9
        True
    """
    lr, sr, hr = as_chw(lr, "lr"), as_chw(sr, "sr"), as_chw(hr, "hr")
    check_same_shape(sr=sr, hr=hr)
    scale = sr.shape[-1] / lr.shape[-1]
    if not float(scale).is_integer() or scale < 1 or sr.shape[0] != lr.shape[0]:
        raise ValueError(
            f"`sr` must be an integer multiple of `lr` with its channels, got {tuple(sr.shape)} and {tuple(lr.shape)}."
        )
    if isinstance(border, bool) or not isinstance(border, int) or border < 0 or 2 * border >= min(sr.shape[1:]):
        raise ValueError(f"`border` must be an int in [0, {min(sr.shape[1:]) // 2}), got {border!r}.")
    scale = int(scale)
    lr, sr, hr = _crop(lr, border // scale), _crop(sr, border), _crop(hr, border)
    lr_up = _resize_bilinear(lr, scale) if scale > 1 else lr
    if lr_up.shape != hr.shape:
        raise ValueError(f"The cropped LR upsampled by {scale} is {lr_up.shape}, not the HR's {hr.shape}.")
    sr_down = _resize_bilinear(sr, 1 / scale)
    # Consistency: the LR against the SR downsampled.
    reflectance = float(np.nanmean(np.abs(lr - sr_down).mean(axis=0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (lr * sr_down).sum(axis=0) / (np.linalg.norm(lr, axis=0) * np.linalg.norm(sr_down, axis=0))
        spectral = float(np.nanmean(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))))
    _, spatial = _align(lr, sr_down)
    # Synthesis and correctness on the harmonised SR.
    harmonised = sr
    if harmonize:
        harmonised, _ = _align(match_histograms(sr, hr), hr)
    synthesis_value = float(np.nanmean(np.abs(lr_up - harmonised).mean(axis=0)))
    d_ref = _normalised_difference(lr_up, hr)
    d_im = _normalised_difference(harmonised, hr)
    d_om = _normalised_difference(harmonised, lr_up)
    flat = np.sort(d_ref.ravel())
    threshold = float(flat[max(int(0.75 * flat.size), 1) - 1])
    mask = (d_ref > threshold) | (d_im > threshold) | (d_om > threshold)
    result = classify_pixels(d_ref, d_im, d_om, mask, threshold, CORRECTNESS_LAMBDA, CORRECTNESS_TEMPERATURE)
    return OpenSRTestResult(reflectance, spectral, spatial, synthesis_value, result)


__all__ = [
    "OPENSR_BORDER",
    "OPENSR_MAX_TRANSLATION",
    "OPENSR_UPSAMPLE_FACTOR",
    "OpenSRTestResult",
    "match_histograms",
    "opensr_test_metrics",
    "subpixel_shift",
    "translate_bilinear",
]
