"""Weight-free trust metrics: does an output agree with its LR, how much does it add, and is what it adds right?

Three groups, after the definitions of ESA's OpenSR-test benchmark (Aybar et al., "A Comprehensive Benchmark for
Optical Remote Sensing Image Super-Resolution", IEEE GRSL 2024, and the `opensr-test` documentation), implemented
here from those definitions. Every image is a float array in ``[0, 1]``, ``(C, H, W)`` (numpy or torch; a leading
batch dimension of 1 is accepted); per-pixel distances are the L1 distance averaged over the channels.

- **Consistency** ([`consistency`], no HR needed): the output is downsampled with the project's degradation
  ([`~neurop_diff_diffusers.data.bicubic_degrade`]: antialiased bicubic on 8-bit levels, the one that made the
  training LRs) to the LR size and compared with the LR: *reflectance* (mean absolute difference; also on the 0..255
  scale), *spectral* (mean spectral angle between the pixels' band vectors, degrees) and *spatial* (the shift between
  the two found by phase correlation, in LR pixels; [`phase_correlation_shift`]).
- **Synthesis** ([`synthesis`], no HR needed): the L1 distance between the output and the bicubic upsampling of the
  LR, i.e. how much the output adds to (or changes in) what the LR already says; 0 for the upsampled LR itself.
- **Correctness** ([`correctness`], needs the HR): each pixel is classed as an *improvement* (the output moved from
  the upsampled LR towards the HR), an *omission* (it stayed at the upsampled LR where the HR differs) or a
  *hallucination* (it moved away from both). With per-pixel distances ``d(SR, HR)``, ``d(SR, LR_up)`` and the
  reference ``d(LR_up, HR)``: ``d_im = d(SR, HR) / d(LR_up, HR)``, ``d_om = d(SR, LR_up) / d(LR_up, HR)``,
  ``H = d_im + d_om - 1`` and the three scores (lower = more likely)

  - improvement ``= d_im + d_om (1 - exp(-lambda H))``,
  - omission ``= d_om + d_im (1 - exp(-lambda H))``,
  - hallucination ``= exp(-lambda d_im d_om)``,

  turned into per-pixel class probabilities by a softmin with temperature ``T`` (``softmax(-score / T)``); a pixel's
  class is the most probable one. A pixel is classed when *any* of its three distances exceeds ``t``, the 75th
  percentile of the reference distance (OpenSR-test's rule): where the HR holds detail the LR lacks, and also
  wherever the output moved, so that texture invented on flat ground (reference distance near 0, normalised
  distances huge) is classed, as hallucination. The published defaults are used: 75th percentile,
  ``lambda = 0.05``, ``T = 0.25``. [`CorrectnessResult`] holds the class map, each class's share of the classed
  pixels and of all pixels, the classed fraction, and the mean class probabilities (the temperature changes only
  the probabilities, not the classes).

  Known answers: an output equal to the upsampled LR is all *omission* (``d_im = 1, d_om = 0``); an output equal to
  the HR is all *improvement* (``d_im = 0, d_om = 1``); an output far from both is *hallucination*.

What the figures cannot see: the LR agreement is blind to everything above the LR's Nyquist frequency (invented
detail there leaves it at 0), and after back-projection it holds by construction when measured with the kernel that
back-projection minimises (the training degradation): [`lr_agreement_bilinear`] measures it with an independent
kernel. The correctness classes need the HR and say nothing where the output and the HR agree with the upsampled LR
(flat ground left flat is unclassed). Bicubic's own row (all omission, synthesis 0) holds by construction: it is a
floor, not a measurement.

This module's default mode differs from `opensr-test` 1.3.3 (its defaults) in five ways, each deliberate; the
OpenSR-test-compatible mode ([`~neurop_diff_diffusers.metrics.opensr.opensr_test_metrics`]) reproduces its numbers
(tested against it, to 1e-6):

1. *distance*: L1 averaged over the channels, on the ``[0, 1]`` scale (OpenSR-test: the normalised difference
   ``|x - y| / |x + y|``, which weighs dark pixels more; an absolute error is what the bound and the tables use);
2. *reported figure*: each class's share of the classed pixels (and of all pixels); OpenSR-test reports each class's
   softmin probability averaged over the classed pixels (our ``mean_probabilities``);
3. *border*: none cropped (OpenSR-test crops 16 HR px from every side);
4. *synthesis baseline*: the LR upsampled bicubically (the evaluation's baseline), after no harmonisation;
   OpenSR-test upsamples bilinearly and first matches the SR's histogram to the HR's and aligns it by phase
   correlation (here the LR is made from the HR by the same degradation, so both are aligned; the spatial metric
   reports any shift);
5. *threshold*: the 75th percentile interpolated (numpy), OpenSR-test takes the ``int(0.75 n)``-th smallest value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
import torch

#: Percentile of the reference distance ``d(LR_up, HR)`` above which pixels are classed (the published default).
CORRECTNESS_PERCENTILE = 75.0
#: ``lambda`` of the improvement / omission / hallucination scores (the published default).
CORRECTNESS_LAMBDA = 0.05
#: Temperature of the softmin that turns the three scores into class probabilities (the published default).
CORRECTNESS_TEMPERATURE = 0.25
#: The classes of [`correctness`], in the order of its probability maps; unclassified pixels are ``-1``.
CORRECTNESS_CLASSES: tuple[str, ...] = ("improvement", "omission", "hallucination")


def as_chw(image: Any, name: str) -> np.ndarray:
    """A float64 ``(C, H, W)`` numpy copy of a numpy array or tensor ``(C, H, W)`` / ``(1, C, H, W)``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float64).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy array or a torch tensor, got {type(image).__name__}.")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"`{name}` must have shape (C, H, W) or (1, C, H, W), got {tuple(image.shape)}.")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"`{name}` must hold floats in [0, 1], got dtype {image.dtype}.")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise ValueError(f"`{name}` has non-finite values.")
    return image


def check_same_shape(**images: np.ndarray) -> None:
    shapes = {name: image.shape for name, image in images.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"The images must have the same shape, got {shapes}.")


def pixel_l1(a: Any, b: Any) -> np.ndarray:
    """The per-pixel L1 distance: ``mean_c |a - b|``, an ``(H, W)`` map.

    Args:
        a (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` floats.
        b (`np.ndarray` or `torch.Tensor`): the same shape.

    Returns:
        `np.ndarray`: ``(H, W)`` float64.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import pixel_l1
        >>> pixel_l1(np.zeros((3, 1, 2)), np.full((3, 1, 2), 0.5)).tolist()
        [[0.5, 0.5]]
    """
    a, b = as_chw(a, "a"), as_chw(b, "b")
    check_same_shape(a=a, b=b)
    return np.abs(a - b).mean(axis=0)


def spectral_angle(a: Any, b: Any) -> float:
    """Mean spectral angle (degrees) between the band vectors of the pixels of `a` and `b`.

    The angle of a pixel is ``arccos(<a, b> / (|a| |b|))``: 0 when the two spectra are proportional (same "colour",
    any brightness). A pixel where both vectors are zero has angle 0, one where only one is zero 90 degrees.

    Args:
        a (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` floats.
        b (`np.ndarray` or `torch.Tensor`): the same shape.

    Returns:
        `float`: the mean angle over the pixels, in degrees.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import spectral_angle
        >>> x = np.random.default_rng(0).random((3, 8, 8))
        >>> spectral_angle(x, 0.5 * x)
        0.0
        >>> round(spectral_angle(np.array([[[1.0]], [[0.0]]]), np.array([[[0.0]], [[1.0]]])), 6)
        90.0
    """
    a, b = as_chw(a, "a"), as_chw(b, "b")
    check_same_shape(a=a, b=b)
    dot = (a * b).sum(axis=0)
    norms = np.sqrt((a * a).sum(axis=0)) * np.sqrt((b * b).sum(axis=0))
    both_zero = ~a.any(axis=0) & ~b.any(axis=0)
    cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    angle = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    angle = np.where(both_zero, 0.0, angle)
    # Proportional spectra: the cosine may round to 1 - 1e-16, whose arccos is 1e-6 degrees, not 0.
    angle = np.where(np.isclose(cosine, 1.0, rtol=0.0, atol=1e-12), 0.0, angle)
    return float(angle.mean())


def phase_correlation_shift(reference: Any, moving: Any) -> tuple[float, float]:
    """The translation ``(dy, dx)`` of `moving` relative to `reference`, by phase correlation.

    Both images are reduced to their channel mean, their means removed and a separable Hann window applied; the
    normalised cross-power spectrum's inverse transform peaks at the shift. The integer peak is refined to a
    fraction of a pixel by a parabola through the peak and its two neighbours along each axis. A positive ``dy``
    means that `moving`'s content lies lower (``moving[y] ~ reference[y - dy]``).

    Args:
        reference (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` floats, at least 4x4.
        moving (`np.ndarray` or `torch.Tensor`): the same shape.

    Returns:
        `tuple[float, float]`: ``(dy, dx)`` in pixels, each within ``[-size / 2, size / 2)``; ``(0.0, 0.0)`` for an
        image without structure (constant).

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import phase_correlation_shift
        >>> x = np.random.default_rng(0).random((3, 64, 64))
        >>> dy, dx = phase_correlation_shift(x, np.roll(x, (3, -5), axis=(1, 2)))
        >>> round(dy), round(dx)
        (3, -5)
    """
    reference, moving = as_chw(reference, "reference"), as_chw(moving, "moving")
    check_same_shape(reference=reference, moving=moving)
    height, width = reference.shape[-2:]
    if min(height, width) < 4:
        raise ValueError(f"`reference` must be at least 4x4 pixels, got {height}x{width}.")
    window = np.outer(np.hanning(height), np.hanning(width))
    ref = reference.mean(axis=0)
    mov = moving.mean(axis=0)
    spectrum = np.fft.fft2((mov - mov.mean()) * window) * np.conj(np.fft.fft2((ref - ref.mean()) * window))
    magnitude = np.abs(spectrum)
    if not (magnitude > 1e-12 * max(1.0, float(magnitude.max()))).any():
        return 0.0, 0.0
    correlation = np.real(np.fft.ifft2(spectrum / np.maximum(magnitude, 1e-12 * float(magnitude.max()))))
    peak_y, peak_x = np.unravel_index(int(np.argmax(correlation)), correlation.shape)

    def refine(values: tuple[float, float, float]) -> float:
        left, centre, right = values
        denominator = left - 2.0 * centre + right
        return 0.0 if denominator >= 0 else float(np.clip(0.5 * (left - right) / denominator, -0.5, 0.5))

    dy = peak_y + refine(tuple(correlation[(peak_y + k) % height, peak_x] for k in (-1, 0, 1)))
    dx = peak_x + refine(tuple(correlation[peak_y, (peak_x + k) % width] for k in (-1, 0, 1)))
    dy = dy - height if dy >= height / 2 else dy
    dx = dx - width if dx >= width / 2 else dx
    return float(dy), float(dx)


def output_and_lr(output: Any, lr: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(output, lr)`` as ``(C, H, W)`` arrays, the LR with the output's channels and no larger, or one
    ``ValueError``."""
    output, lr = as_chw(output, "output"), as_chw(lr, "lr")
    if output.shape[0] != lr.shape[0] or lr.shape[1] > output.shape[1] or lr.shape[2] > output.shape[2]:
        raise ValueError(
            f"`lr` must have the channels of `output` and be no larger, got {tuple(lr.shape)} for "
            f"{tuple(output.shape)}."
        )
    return output, lr


def downsample_to(output: Any, lr_size: tuple[int, int], quantize: bool = True) -> np.ndarray:
    """The output downsampled to the LR size with the project's degradation (antialiased bicubic, as in training).

    Args:
        output (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` floats in ``[0, 1]``.
        lr_size (`tuple[int, int]`): ``(h, w)`` of the LR, each at most the output's side.
        quantize (`bool`, defaults to `True`): on 8-bit levels, as [`~neurop_diff_diffusers.data.bicubic_degrade`]
            made the training LRs (PIL-equivalent); `False`: in floating point.

    Returns:
        `np.ndarray`: ``(C, h, w)`` float64 in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import downsample_to
        >>> downsample_to(np.full((3, 32, 32), 0.2), (8, 8)).shape
        (3, 8, 8)
    """
    from ..data import bicubic_degrade

    array = as_chw(output, "output")
    size = (int(lr_size[0]), int(lr_size[1]))
    lr = bicubic_degrade(torch.from_numpy(array).float(), size=size, quantize=quantize, value_range=(0.0, 1.0))
    return lr.to(torch.float64).numpy()


def consistency(output: Any, lr: Any, quantize: bool = True) -> dict[str, float]:
    """How well `output` agrees with its LR: the output downsampled to the LR size ([`downsample_to`]) against the LR.

    Args:
        output (`np.ndarray` or `torch.Tensor`): the super-resolved image, ``(C, H, W)`` floats in ``[0, 1]``.
        lr (`np.ndarray` or `torch.Tensor`): the LR it was made from, ``(C, h, w)`` in ``[0, 1]``, ``h <= H``,
            ``w <= W``.
        quantize (`bool`, defaults to `True`): downsample on 8-bit levels (see [`downsample_to`]).

    Returns:
        `dict[str, float]`: ``reflectance_l1`` (mean absolute difference, ``[0, 1]`` scale), ``reflectance_l1_255``
        (the same on the 0..255 scale), ``spectral_angle`` (degrees, [`spectral_angle`]), ``shift_y``, ``shift_x``
        and ``shift`` (the phase-correlation shift of the downsampled output against the LR and its length, in LR
        pixels; 0 when the LR is smaller than 4x4).

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import consistency, downsample_to
        >>> hr = np.random.default_rng(0).random((3, 64, 64))
        >>> lr = downsample_to(hr, (16, 16))
        >>> consistency(hr, lr)["reflectance_l1"]
        0.0
    """
    output, lr = output_and_lr(output, lr)
    down = downsample_to(output, lr.shape[1:], quantize=quantize)
    l1 = float(np.abs(down - lr).mean())
    dy, dx = phase_correlation_shift(lr, down) if min(lr.shape[1:]) >= 4 else (0.0, 0.0)
    return {
        "reflectance_l1": l1,
        "reflectance_l1_255": 255.0 * l1,
        "spectral_angle": spectral_angle(down, lr),
        "shift_y": dy,
        "shift_x": dx,
        "shift": math.hypot(dy, dx),
    }


def upsample_lr(lr: Any, size: tuple[int, int]) -> np.ndarray:
    """The bicubic upsampling of the LR to the output size (the evaluation's bicubic baseline, clamped to ``[0, 1]``).

    Args:
        lr (`np.ndarray` or `torch.Tensor`): ``(C, h, w)`` floats in ``[0, 1]``.
        size (`tuple[int, int]`): ``(H, W)``.

    Returns:
        `np.ndarray`: ``(C, H, W)`` float64.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import upsample_lr
        >>> float(upsample_lr(np.full((3, 4, 4), 0.5), (8, 8)).max())
        0.5
    """
    from ..pipelines import bicubic_prior

    array = torch.from_numpy(as_chw(lr, "lr"))[None] * 2.0 - 1.0
    up = bicubic_prior(array, (int(size[0]), int(size[1])))[0]
    return ((up + 1.0) / 2.0).clamp(0.0, 1.0).numpy()


def synthesis(output: Any, upsampled_lr: Any) -> float:
    """How much the output adds to the upsampled LR: the mean L1 distance between the two (``[0, 1]`` scale).

    Args:
        output (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` floats in ``[0, 1]``.
        upsampled_lr (`np.ndarray` or `torch.Tensor`): the LR upsampled to the same size ([`upsample_lr`]).

    Returns:
        `float`: 0 for the upsampled LR itself; larger means more synthesised detail (right or wrong: see
        [`correctness`]).

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import synthesis
        >>> x = np.random.default_rng(0).random((3, 8, 8))
        >>> synthesis(x, x)
        0.0
    """
    return float(pixel_l1(output, upsampled_lr).mean())


@dataclass
class CorrectnessResult:
    """The output of [`correctness`] (and of the OpenSR-test-compatible
    [`~neurop_diff_diffusers.metrics.opensr.opensr_test_metrics`]).

    Args:
        classes (`np.ndarray`): ``(H, W)`` int8, the class map: 0 improvement, 1 omission, 2 hallucination, -1
            unclassified.
        probabilities (`np.ndarray`): ``(3, H, W)`` float64, the softmin class probabilities (0 where unclassified).
        fractions (`dict[str, float | None]`): each class's share of the *classified* pixels (``None`` when no pixel
            is classified, e.g. an output, HR and upsampled LR that are all equal).
        classified_fraction (`float`): the share of all pixels that were classified.
        shares_of_all (`dict[str, float]`): each class's share of *all* pixels (they sum to `classified_fraction`).
        mean_probabilities (`dict[str, float | None]`): each class's softmin probability averaged over the classified
            pixels (OpenSR-test's reported figure); ``None`` when no pixel is classified.
        threshold (`float`): the distance above which a pixel is classified.
    """

    classes: np.ndarray
    probabilities: np.ndarray
    fractions: dict[str, float | None]
    classified_fraction: float
    shares_of_all: dict[str, float] = field(default_factory=dict)
    mean_probabilities: dict[str, float | None] = field(default_factory=dict)
    threshold: float = 0.0


def _check_positive(value: Any, name: str, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    if upper is not None and value > upper:
        raise ValueError(f"`{name}` must be at most {upper}, got {value!r}.")
    return float(value)


def correctness_scores(
    d_im: np.ndarray, d_om: np.ndarray, lam: float = CORRECTNESS_LAMBDA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The improvement, omission and hallucination scores (lower = more likely) from the normalised distances.

    Args:
        d_im (`np.ndarray`): ``d(SR, HR) / d(LR_up, HR)`` per pixel (``inf`` where the reference distance is 0).
        d_om (`np.ndarray`): ``d(SR, LR_up) / d(LR_up, HR)`` per pixel.
        lam (`float`, defaults to `CORRECTNESS_LAMBDA`): the scores' ``lambda``.

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: ``(improvement, omission, hallucination)``, see this module's
        docstring.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import correctness_scores
        >>> [float(s[0]) for s in correctness_scores(np.array([0.0]), np.array([1.0]))]  # the output is the HR
        [0.0, 1.0, 1.0]
    """
    lam = _check_positive(lam, "lam")
    with np.errstate(invalid="ignore", over="ignore"):
        h = d_im + d_om - 1.0
        damping = 1.0 - np.exp(-lam * h)
        # 0 * inf (a zero distance times an infinite damping) is 0: that distance adds nothing.
        improvement = d_im + np.where(d_om == 0, 0.0, d_om * damping)
        omission = d_om + np.where(d_im == 0, 0.0, d_im * damping)
        hallucination = np.exp(-lam * np.where((d_im == 0) | (d_om == 0), 0.0, d_im * d_om))
    return improvement, omission, hallucination


def _softmin(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(-scores / T)`` over the first axis, stable (an infinite score gets probability 0)."""
    logits = -scores / temperature
    weights = np.exp(logits - logits.max(axis=0, keepdims=True))
    return weights / weights.sum(axis=0, keepdims=True)


def classify_pixels(
    d_ref: np.ndarray,
    d_im: np.ndarray,
    d_om: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    lam: float,
    temperature: float,
) -> CorrectnessResult:
    """Class map, probabilities and shares of the pixels in `mask`, from the three per-pixel distances."""
    classes = np.full(d_ref.shape, -1, dtype=np.int8)
    probabilities = np.zeros((len(CORRECTNESS_CLASSES), *d_ref.shape))
    count = int(mask.sum())
    if count == 0:
        none = dict.fromkeys(CORRECTNESS_CLASSES)
        return CorrectnessResult(
            classes, probabilities, none, 0.0, dict.fromkeys(CORRECTNESS_CLASSES, 0.0), none, threshold
        )
    reference = d_ref[mask]
    with np.errstate(divide="ignore", invalid="ignore"):
        # A classified pixel whose reference distance is 0 (nothing to add there) is infinitely far in d_im and d_om
        # (with the L1 distance both are then equal and > 0): it scores as hallucination.
        ratio_im = np.where(reference > 0, d_im[mask] / reference, np.where(d_im[mask] > 0, np.inf, 0.0))
        ratio_om = np.where(reference > 0, d_om[mask] / reference, np.where(d_om[mask] > 0, np.inf, 0.0))
    scores = np.stack(correctness_scores(ratio_im, ratio_om, lam))
    probabilities[:, mask] = _softmin(scores, temperature)
    classes[mask] = np.argmax(probabilities[:, mask], axis=0).astype(np.int8)
    total = d_ref.size
    counts = {name: int((classes[mask] == k).sum()) for k, name in enumerate(CORRECTNESS_CLASSES)}
    return CorrectnessResult(
        classes=classes,
        probabilities=probabilities,
        fractions={name: counts[name] / count for name in CORRECTNESS_CLASSES},
        classified_fraction=count / total,
        shares_of_all={name: counts[name] / total for name in CORRECTNESS_CLASSES},
        mean_probabilities={name: float(probabilities[k][mask].mean()) for k, name in enumerate(CORRECTNESS_CLASSES)},
        threshold=float(threshold),
    )


def correctness(
    output: Any,
    hr: Any,
    upsampled_lr: Any,
    *,
    percentile: float = CORRECTNESS_PERCENTILE,
    lam: float = CORRECTNESS_LAMBDA,
    temperature: float = CORRECTNESS_TEMPERATURE,
) -> CorrectnessResult:
    """Per-pixel improvement / omission / hallucination classification (see this module's docstring).

    A pixel is classified when any of its three distances exceeds the threshold ``t`` (the `percentile` of the
    reference distance ``d(LR_up, HR)``): ``d(LR_up, HR) > t`` (detail the HR has and the LR lacks) *or*
    ``d(SR, HR) > t`` *or* ``d(SR, LR_up) > t`` (the output moved: detail it added, right or wrong). OpenSR-test's
    rule. The second and third terms are what catch texture invented on flat ground, where the HR holds no detail.

    Args:
        output (`np.ndarray` or `torch.Tensor`): the super-resolved image, ``(C, H, W)`` floats in ``[0, 1]``.
        hr (`np.ndarray` or `torch.Tensor`): the HR, same shape.
        upsampled_lr (`np.ndarray` or `torch.Tensor`): the LR upsampled to the same shape ([`upsample_lr`]).
        percentile (`float`, defaults to 75): the threshold is this percentile of ``d(LR_up, HR)``; in ``(0, 100]``.
        lam (`float`, defaults to 0.05): the scores' ``lambda`` ([`correctness_scores`]).
        temperature (`float`, defaults to 0.25): the softmin temperature of the probability maps.

    Returns:
        [`CorrectnessResult`].

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import correctness
        >>> rng = np.random.default_rng(0)
        >>> hr, up = rng.random((3, 16, 16)), rng.random((3, 16, 16))
        >>> correctness(hr, hr, up).fractions
        {'improvement': 1.0, 'omission': 0.0, 'hallucination': 0.0}
        >>> correctness(up, hr, up).fractions
        {'improvement': 0.0, 'omission': 1.0, 'hallucination': 0.0}
        >>> flat = np.full((3, 16, 16), 0.5)  # flat ground, and an output that invents texture on it
        >>> correctness(flat + 0.1 * rng.standard_normal((3, 16, 16)), flat, flat).shares_of_all["hallucination"]
        1.0
    """
    output, hr, up = as_chw(output, "output"), as_chw(hr, "hr"), as_chw(upsampled_lr, "upsampled_lr")
    check_same_shape(output=output, hr=hr, upsampled_lr=up)
    percentile = _check_positive(percentile, "percentile", 100.0)
    lam = _check_positive(lam, "lam")
    temperature = _check_positive(temperature, "temperature")
    d_ref = np.abs(up - hr).mean(axis=0)
    d_im = np.abs(output - hr).mean(axis=0)
    d_om = np.abs(output - up).mean(axis=0)
    threshold = float(np.percentile(d_ref, percentile))
    mask = (d_ref > threshold) | (d_im > threshold) | (d_om > threshold)
    return classify_pixels(d_ref, d_im, d_om, mask, threshold, lam, temperature)


#: Colours (RGB) of the classes in [`correctness_map_image`]: improvement green, omission blue, hallucination red.
CORRECTNESS_COLOURS: tuple[tuple[int, int, int], ...] = ((40, 170, 60), (60, 110, 220), (220, 40, 40))


def correctness_map_image(result: CorrectnessResult, background: Any | None = None) -> np.ndarray:
    """An RGB picture of a classification: each classified pixel in its class colour ([`CORRECTNESS_COLOURS`]), its
    intensity the class probability; unclassified pixels show the dimmed grey `background` (or black).

    Args:
        result ([`CorrectnessResult`]): from [`correctness`].
        background (`np.ndarray` or `torch.Tensor`, *optional*): ``(C, H, W)`` in ``[0, 1]`` (e.g. the HR).

    Returns:
        `np.ndarray`: ``(H, W, 3)`` uint8.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import correctness, correctness_map_image
        >>> hr = np.random.default_rng(0).random((3, 8, 8))
        >>> correctness_map_image(correctness(hr, hr, np.zeros_like(hr))).shape
        (8, 8, 3)
    """
    height, width = result.classes.shape
    picture = np.zeros((height, width, 3))
    if background is not None:
        grey = as_chw(background, "background").mean(axis=0)
        picture[:] = (0.35 * grey * 255.0)[..., None]
    colours = np.asarray(CORRECTNESS_COLOURS, dtype=np.float64)
    for k in range(len(CORRECTNESS_CLASSES)):
        where = result.classes == k
        strength = 0.4 + 0.6 * result.probabilities[k][where]
        picture[where] = colours[k] * strength[:, None]
    return np.clip(np.round(picture), 0, 255).astype(np.uint8)


def lr_agreement_bilinear(output: Any, lr: Any) -> float:
    """The LR agreement under an independent kernel: mean ``|down(output) - LR|`` on the 0..255 scale, ``down`` =
    antialiased *bilinear* downsampling in floating point (torch), not the training degradation.

    Back-projection makes the output's downsampling with the training kernel equal the LR, so [`consistency`]'s
    figure is near 0 by construction after it; this one is not, and shows how much of the agreement is the kernel's.

    Args:
        output (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` floats in ``[0, 1]``.
        lr (`np.ndarray` or `torch.Tensor`): ``(C, h, w)``.

    Returns:
        `float`: levels.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import lr_agreement_bilinear
        >>> lr_agreement_bilinear(np.full((3, 8, 8), 0.5), np.full((3, 4, 4), 0.5))
        0.0
    """
    output, lr = output_and_lr(output, lr)
    tensor = torch.from_numpy(output)[None]
    down = torch.nn.functional.interpolate(tensor, size=tuple(lr.shape[1:]), mode="bilinear", antialias=True)[0]
    return float(np.abs(down.numpy() - lr).mean() * 255.0)


def trust_metrics(output: Any, lr: Any, hr: Any | None = None) -> dict[str, float | None]:
    """All the trust metrics of one output as a flat dict: [`consistency`], [`synthesis`] and, with an HR, the
    [`correctness`] fractions (``None`` without an HR, or when no pixel is classified).

    Args:
        output (`np.ndarray` or `torch.Tensor`): the super-resolved image, ``(C, H, W)`` floats in ``[0, 1]``.
        lr (`np.ndarray` or `torch.Tensor`): its LR, ``(C, h, w)``.
        hr (`np.ndarray` or `torch.Tensor`, *optional*): the HR, same shape as `output`.

    Returns:
        `dict[str, float | None]`: ``lr_l1_255`` (training kernel), ``lr_l1_255_bilinear`` (an independent kernel,
        [`lr_agreement_bilinear`]), ``spectral_angle``, ``shift``, ``synthesis``; with an HR ``classified`` (the
        share of pixels classed), ``improvement`` / ``omission`` / ``hallucination`` (shares of the classed pixels)
        and ``improvement_all`` / ``omission_all`` / ``hallucination_all`` (shares of all pixels); ``None`` without.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.trust import trust_metrics, upsample_lr
        >>> lr = np.random.default_rng(0).random((3, 8, 8))
        >>> row = trust_metrics(upsample_lr(lr, (32, 32)), lr)
        >>> row["synthesis"], row["hallucination"]
        (0.0, None)
    """
    output_array = as_chw(output, "output")
    lr_array = as_chw(lr, "lr")
    agreement = consistency(output_array, lr_array)
    up = upsample_lr(lr_array, output_array.shape[1:])
    row: dict[str, float | None] = {
        "lr_l1_255": agreement["reflectance_l1_255"],
        "lr_l1_255_bilinear": lr_agreement_bilinear(output_array, lr_array),
        "spectral_angle": agreement["spectral_angle"],
        "shift": agreement["shift"],
        "synthesis": synthesis(output_array, up),
    }
    result = correctness(output_array, hr, up) if hr is not None else None
    row["classified"] = None if result is None else result.classified_fraction
    for name in CORRECTNESS_CLASSES:
        row[name] = None if result is None else result.fractions[name]
        row[f"{name}_all"] = None if result is None else result.shares_of_all[name]
    return row


def lr_agreement(x: torch.Tensor, lr: torch.Tensor) -> float:
    """Mean absolute difference, on the 0..255 scale, between `lr` and `x` downsampled to its size with the
    project's degradation ([`~neurop_diff_diffusers.data.bicubic_degrade`], 8-bit levels, as the training LRs).

    Args:
        x (`torch.Tensor`): ``(B, C, H, W)`` in ``[-1, 1]``.
        lr (`torch.Tensor`): ``(B, C, h, w)`` in ``[-1, 1]``.

    Returns:
        `float`: levels (0 = the output's downsampling is the LR).

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.trust import lr_agreement
        >>> lr_agreement(-torch.ones(1, 3, 8, 8), -torch.ones(1, 3, 4, 4))
        0.0
    """
    from ..data import bicubic_degrade

    down = bicubic_degrade(x.float(), size=tuple(lr.shape[-2:]))
    return float((down - lr.float().to(down.device)).abs().mean() * 127.5)


__all__ = [
    "lr_agreement_bilinear",
    "CORRECTNESS_CLASSES",
    "CORRECTNESS_COLOURS",
    "CORRECTNESS_LAMBDA",
    "CORRECTNESS_PERCENTILE",
    "CORRECTNESS_TEMPERATURE",
    "CorrectnessResult",
    "consistency",
    "correctness",
    "lr_agreement",
    "correctness_map_image",
    "correctness_scores",
    "downsample_to",
    "phase_correlation_shift",
    "pixel_l1",
    "spectral_angle",
    "synthesis",
    "trust_metrics",
    "upsample_lr",
]
