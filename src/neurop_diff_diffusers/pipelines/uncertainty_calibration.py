"""A calibrated error bound for the uncertainty map: the factor ``k`` such that ``k * map`` bounds the real error.

The uncertainty map ([`~neurop_diff_diffusers.pipelines.uncertainty`], ``pipe(..., num_samples=N)``) is a spread of
samples, not an error: the samples of a small model may agree on a wrong output. Split-conformal calibration turns it
into a bound that holds on a stated share of the pixels (not in the paper):

- *fit* (on images the model was trained on, never on the held-out split): for every pixel of every calibration image
  the ratio ``r = e / u`` of its error ``e = mean_c |output - HR|`` (``[0, 1]`` scale, [`pixel_error`]) to its map
  value ``u``; ``k`` is the ``ceil((n + 1) * 0.9) / n`` empirical quantile of the ``n`` ratios
  ([`conformal_factor`]), so that ``e <= k * u`` on at least 90 % of them;
- *check* (on held-out images): the share of the pixels with ``e <= k * u`` ([`bound_coverage`]) should be close to
  0.9. Pixels are not independent (neighbours share their errors), so the guarantee of split-conformal prediction
  (exchangeable samples) holds only approximately: the held-out coverage is the measurement that counts.

The factor depends on the model and on how the map is made (``N``, the pooling sigma, flips, the steps, the scale),
so it is stored with the model, in ``model_index.json`` under [`ERROR_BOUND_KEY`], with those settings
([`check_error_bound`]); [`error_bound_factor`] gives the factor for a call, or ``None`` where the calibration does
not apply, and [`uncertainty_tags`] the tags of a map file.

Example:
    >>> import numpy as np
    >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import bound_coverage, conformal_factor
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.uniform(0.01, 0.05, 100_000)
    >>> errors = np.abs(rng.normal(0.0, maps))  # the error is Gaussian with the map as its standard deviation
    >>> k = conformal_factor(errors, maps)
    >>> round(k, 2)  # the 90 % quantile of |N(0, 1)|
    1.65
    >>> round(bound_coverage(errors, maps, k), 3)
    0.9
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

#: The ``model_index.json`` key of the calibration (next to ``default_data_consistency_steps``).
ERROR_BOUND_KEY = "uncertainty_error_bound_90"
#: The share of the pixels the bound is fitted to hold on.
BOUND_COVERAGE = 0.9
#: The map's tag holding ``k``: ``k * map`` bounds the per-pixel error on 90 % of the pixels.
ERROR_BOUND_TAG = "NEUROP_DIFF_ERROR_BOUND_90"
#: The map's tag holding ``N``, the samples its spread was taken over.
NUM_SAMPLES_TAG = "NEUROP_DIFF_NUM_SAMPLES"
#: The map's tag saying what the spread is (the standard deviation's ``ddof``).
SPREAD_TAG = "NEUROP_DIFF_SPREAD"
SPREAD_DESCRIPTION = "sample standard deviation (ddof=1) over the samples before clamping, mean over channels, 0..1"
#: Largest accepted factor (a map that bounds its error only when multiplied by more is useless, or broken).
MAX_FACTOR = 1.0e4


def pixel_error(output: Any, hr: Any) -> np.ndarray:
    """The per-pixel error the bound is about: ``mean_c |output - HR|`` on the ``[0, 1]`` scale.

    Args:
        output (`np.ndarray` or `torch.Tensor`): ``(C, H, W)`` or ``(1, C, H, W)`` in ``[0, 1]``.
        hr (`np.ndarray` or `torch.Tensor`): the same shape.

    Returns:
        `np.ndarray`: ``(H, W)`` float64.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import pixel_error
        >>> pixel_error(np.zeros((3, 1, 2)), np.full((3, 1, 2), 0.25)).tolist()
        [[0.25, 0.25]]
    """
    output, hr = _as_array(output, "output"), _as_array(hr, "hr")
    if output.shape != hr.shape or output.ndim != 3:
        raise ValueError(f"`output` and `hr` must be (C, H, W) of one shape, got {output.shape} and {hr.shape}.")
    return np.abs(output - hr).mean(axis=0)


def _as_array(image: Any, name: str) -> np.ndarray:
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().cpu().double().numpy()
    array = np.asarray(image, dtype=np.float64)
    return array[0] if array.ndim == 4 and array.shape[0] == 1 else array


def _ratios(errors: Any, maps: Any) -> np.ndarray:
    errors = np.asarray(errors, dtype=np.float64).ravel()
    maps = np.asarray(maps, dtype=np.float64).ravel()
    if errors.shape != maps.shape or errors.size == 0:
        raise ValueError(f"`errors` and `maps` must be non-empty and of one size, got {errors.size} and {maps.size}.")
    if not (np.isfinite(errors).all() and np.isfinite(maps).all()) or (errors < 0).any() or (maps < 0).any():
        raise ValueError("`errors` and `maps` must be finite and >= 0.")
    # A pixel whose map is 0 is bounded by any k only when its error is 0 too.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(maps > 0, errors / np.where(maps > 0, maps, 1.0), np.where(errors > 0, np.inf, 0.0))


def conformal_factor(errors: Any, maps: Any, coverage: float = BOUND_COVERAGE) -> float:
    """The split-conformal factor: the smallest ``k`` with ``errors <= k * maps`` on a ``ceil((n + 1) coverage) / n``
    share of the ``n`` calibration pixels.

    Args:
        errors (`array-like`): per-pixel errors (>= 0), any shape; pool the pixels of all calibration images.
        maps (`array-like`): the map values at the same pixels (>= 0).
        coverage (`float`, defaults to 0.9): in ``(0, 1)``.

    Returns:
        `float`: ``k`` (``inf`` when more than ``1 - coverage`` of the pixels have a zero map and a non-zero error).

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import conformal_factor
        >>> conformal_factor([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], coverage=0.5)  # ceil(5 * 0.5) = 3rd
        3.0
    """
    if isinstance(coverage, bool) or not isinstance(coverage, Real) or not 0 < coverage < 1:
        raise ValueError(f"`coverage` must be a number in (0, 1), got {coverage!r}.")
    ratios = _ratios(errors, maps)
    n = ratios.size
    rank = min(n, math.ceil((n + 1) * float(coverage)))
    return float(np.partition(ratios, rank - 1)[rank - 1])


def bound_coverage(errors: Any, maps: Any, factor: float) -> float:
    """The share of the pixels whose error is within the bound: ``mean(errors <= factor * maps)``.

    Args:
        errors (`array-like`): per-pixel errors (>= 0).
        maps (`array-like`): the map values at the same pixels (>= 0).
        factor (`float`): ``k`` (> 0).

    Returns:
        `float`: in ``[0, 1]``.

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import bound_coverage
        >>> bound_coverage([0.1, 0.3], [0.1, 0.1], 2.0)
        0.5
    """
    if isinstance(factor, bool) or not isinstance(factor, Real) or not factor > 0:
        raise ValueError(f"`factor` must be a number > 0, got {factor!r}.")
    return float((_ratios(errors, maps) <= float(factor)).mean())


def _bad(name: str, allowed: str, value: Any) -> ValueError:
    return ValueError(f"`{ERROR_BOUND_KEY}` {name} must be {allowed}, got {value!r}.")


#: Most calibrations one model folder may hold (one per number of samples and of denoising steps).
MAX_CALIBRATIONS = 8


def check_error_bound(value: Any) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Check the calibration stored in ``model_index.json`` under [`ERROR_BOUND_KEY`] (``None``: none stored).

    The entry is a JSON object: ``coverage`` (0.9), ``num_samples`` (the ``N`` it was fitted for),
    ``uncertainty_sigma``, ``flip_samples``, ``num_inference_steps`` (the settings of the maps it was fitted on) and
    ``factors``: a list of ``{"scales": [low, high], "factor": k}`` (the factor for ``low < scale <= high``; ranges
    increasing and not overlapping), plus free-text ``fitted_on``; or a list of up to [`MAX_CALIBRATIONS`] such
    objects, fitted for different ``N`` or steps (no two for the same pair).

    Args:
        value (`Any`): the entry.

    Returns:
        `dict`, `list` or `None`: the entry.

    Raises:
        ValueError: naming the key, the field and the allowed values.

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import check_error_bound
        >>> entry = {"coverage": 0.9, "num_samples": 4, "uncertainty_sigma": 2.0, "flip_samples": True,
        ...          "num_inference_steps": 20, "factors": [{"scales": [1.0, 4.0], "factor": 2.5}]}
        >>> check_error_bound(entry)["factors"][0]["factor"]
        2.5
    """
    if value is None:
        return None
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_CALIBRATIONS:
            raise _bad("list", f"1 to {MAX_CALIBRATIONS} calibrations", f"{len(value)} of them")
        pairs = [(item["num_samples"], item["num_inference_steps"]) for item in map(_check_one, value)]
        if len(set(pairs)) != len(pairs):
            raise _bad("list", "calibrations for different (num_samples, num_inference_steps)", pairs)
        return value
    return _check_one(value)


def _check_one(value: Any) -> dict[str, Any]:
    from .uncertainty import MAX_NUM_SAMPLES, MAX_UNCERTAINTY_SIGMA

    if not isinstance(value, dict):
        raise ValueError(
            f"`{ERROR_BOUND_KEY}` must be a JSON object, a list of them, or absent, got {type(value).__name__}."
        )
    if value.get("coverage") != BOUND_COVERAGE:
        raise _bad("coverage", str(BOUND_COVERAGE), value.get("coverage"))
    n = value.get("num_samples")
    if isinstance(n, bool) or not isinstance(n, Integral) or not 2 <= n <= MAX_NUM_SAMPLES:
        raise _bad("num_samples", f"an integer in [2, {MAX_NUM_SAMPLES}]", n)
    sigma = value.get("uncertainty_sigma")
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not 0 <= sigma <= MAX_UNCERTAINTY_SIGMA:
        raise _bad("uncertainty_sigma", f"a number in [0, {MAX_UNCERTAINTY_SIGMA:g}]", sigma)
    if not isinstance(value.get("flip_samples"), bool):
        raise _bad("flip_samples", "true or false", value.get("flip_samples"))
    steps = value.get("num_inference_steps")
    if isinstance(steps, bool) or not isinstance(steps, Integral) or not 1 <= steps <= 10_000:
        raise _bad("num_inference_steps", "an integer in [1, 10000]", steps)
    factors = value.get("factors")
    if not isinstance(factors, list) or not 1 <= len(factors) <= 16:
        raise _bad("factors", "a list of 1 to 16 {'scales': [low, high], 'factor': k} objects", factors)
    previous = 1.0
    for item in factors:
        scales = item.get("scales") if isinstance(item, dict) else None
        factor = item.get("factor") if isinstance(item, dict) else None
        ok = (
            isinstance(scales, list)
            and len(scales) == 2
            and all(not isinstance(s, bool) and isinstance(s, Real) and math.isfinite(s) for s in scales)
            and previous <= scales[0] < scales[1]
        )
        if not ok:
            raise _bad("factors[].scales", "[low, high] with 1 <= low < high, increasing and not overlapping", scales)
        if isinstance(factor, bool) or not isinstance(factor, Real) or not 0 < factor <= MAX_FACTOR:
            raise _bad("factors[].factor", f"a number in (0, {MAX_FACTOR:g}]", factor)
        previous = float(scales[1])
    return value


def merge_calibration(
    existing: dict[str, Any] | list[dict[str, Any]] | None, calibration: dict[str, Any]
) -> dict[str, Any] | list[dict[str, Any]]:
    """A model's [`ERROR_BOUND_KEY`] entry with one more calibration: it replaces the one fitted for the same ``N``
    and steps, and is added beside the others (kept in order of ``N``, then steps).

    Args:
        existing (`dict`, `list` or `None`): the entry so far (checked: [`check_error_bound`]).
        calibration (`dict`): the new calibration (checked).

    Returns:
        `dict` (the only calibration) or `list`.

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import merge_calibration
        >>> a = {"coverage": 0.9, "num_samples": 4, "uncertainty_sigma": 2.0, "flip_samples": True,
        ...      "num_inference_steps": 10, "factors": [{"scales": [3.5, 4.5], "factor": 11.0}]}
        >>> b = dict(a, num_inference_steps=30, factors=[{"scales": [3.5, 4.5], "factor": 9.0}])
        >>> [c["num_inference_steps"] for c in merge_calibration(a, b)]
        [10, 30]
        >>> c = dict(b, factors=[{"scales": [1.0, 2.0], "factor": 5.0}])  # replaces b: the same N and steps
        >>> merge_calibration(merge_calibration(a, b), c)[1]["factors"]
        [{'scales': [1.0, 2.0], 'factor': 5.0}]
    """
    existing = check_error_bound(existing)
    calibration = _check_one(calibration)
    others = existing if isinstance(existing, list) else [] if existing is None else [existing]
    pair = (calibration["num_samples"], calibration["num_inference_steps"])
    kept = [c for c in others if (c["num_samples"], c["num_inference_steps"]) != pair] + [calibration]
    kept.sort(key=lambda c: (c["num_samples"], c["num_inference_steps"]))
    return check_error_bound(kept if len(kept) > 1 else kept[0])


def error_bound_factor(
    entry: dict[str, Any] | None, num_samples: int, scale: float, num_inference_steps: int
) -> float | None:
    """The factor ``k`` of a call, or ``None`` where the calibration does not apply.

    It applies when the map is made with the ``N`` and the number of denoising steps it was fitted for and the scale
    lies in one of its ranges. It does not carry to other settings: a factor fitted on 64 px crops at 10 steps held
    on 84 % of the pixels of 7 held-out crops, on 77 % of the whole images at 10 steps and on 72 % at 20 steps; the
    embedded model's (whole images, 10 steps) holds on 87 % of 21 held-out images, 83 % at 20 steps on 7 of them
    (README, "Can I trust the detail?").

    Args:
        entry (`dict` or `None`): the calibration (checked: [`check_error_bound`]), e.g.
            ``pipe.config.get("uncertainty_error_bound_90")``.
        num_samples (`int`): the call's ``N``.
        scale (`float`): the call's scale (output side / input side).
        num_inference_steps (`int`): the call's denoising steps.

    Returns:
        `float` or `None`.

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import error_bound_factor
        >>> entry = {"coverage": 0.9, "num_samples": 4, "uncertainty_sigma": 2.0, "flip_samples": True,
        ...          "num_inference_steps": 10, "factors": [{"scales": [1.0, 2.5], "factor": 2.0},
        ...                                                 {"scales": [2.5, 4.5], "factor": 3.0}]}
        >>> error_bound_factor(entry, 4, 4.0, 10), error_bound_factor(entry, 8, 4.0, 10)
        (3.0, None)
        >>> error_bound_factor(entry, 4, 6.0, 10), error_bound_factor(entry, 4, 4.0, 20)
        (None, None)
    """
    entry = check_error_bound(entry)
    for calibration in entry if isinstance(entry, list) else [] if entry is None else [entry]:
        if num_samples != calibration["num_samples"] or num_inference_steps != calibration["num_inference_steps"]:
            continue
        for item in calibration["factors"]:
            low, high = item["scales"]
            if low < scale <= high:
                return float(item["factor"])
    return None


def call_error_bound(config: Any, num_samples: int, scale: float, num_inference_steps: int) -> float | None:
    """The factor ``k`` of one call of a pipeline whose configuration is ``config`` ([`error_bound_factor`] of its
    ``uncertainty_error_bound_90`` entry), or ``None``.

    Args:
        config (`Any`): the pipeline's ``config`` (a mapping; a pipeline without the entry has no bound).
        num_samples (`int`): the call's ``N``.
        scale (`float`): output side / input side.
        num_inference_steps (`int`): the call's denoising steps.

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import call_error_bound
        >>> call_error_bound({}, 4, 4.0, 20) is None
        True
    """
    getter = getattr(config, "get", None)
    entry = getter(ERROR_BOUND_KEY) if getter is not None else None
    return error_bound_factor(entry, num_samples, scale, num_inference_steps)


def uncertainty_tags(num_samples: int, error_bound_90: float | None) -> dict[str, str]:
    """The tags of an uncertainty map file: what the spread is, over how many samples, and the calibrated factor.

    Args:
        num_samples (`int`): ``N``.
        error_bound_90 (`float`, *optional*): ``k`` ([`error_bound_factor`]); ``None``: no calibrated bound, the tag
            is left out.

    Returns:
        `dict[str, str]`: ``NEUROP_DIFF_NUM_SAMPLES``, ``NEUROP_DIFF_SPREAD`` and, with a factor,
        ``NEUROP_DIFF_ERROR_BOUND_90`` (``map * k`` bounds ``mean_c |output - HR|``, 0..1 scale, on 90 % of the
        pixels of the held-out images it was checked on).

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import uncertainty_tags
        >>> uncertainty_tags(4, 2.5)["NEUROP_DIFF_ERROR_BOUND_90"]
        '2.5'
        >>> sorted(uncertainty_tags(4, None))
        ['NEUROP_DIFF_NUM_SAMPLES', 'NEUROP_DIFF_SPREAD']
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, Integral) or num_samples < 2:
        raise ValueError(f"`num_samples` must be an integer >= 2, got {num_samples!r}.")
    tags = {NUM_SAMPLES_TAG: str(int(num_samples)), SPREAD_TAG: SPREAD_DESCRIPTION}
    if error_bound_90 is not None:
        if isinstance(error_bound_90, bool) or not isinstance(error_bound_90, Real) or not error_bound_90 > 0:
            raise ValueError(f"`error_bound_90` must be a number > 0 or None, got {error_bound_90!r}.")
        tags[ERROR_BOUND_TAG] = f"{float(error_bound_90):.6g}"
    return tags


def error_bound_legend(error_bound_90: float | None, vmax: float | None = None) -> str:
    """One sentence for a map's legend: how to turn it into an error bound (empty without a calibrated factor).

    Args:
        error_bound_90 (`float`, *optional*): ``k`` ([`error_bound_factor`]); ``None``: no calibrated bound.
        vmax (`float`, *optional*): the map value of the legend's top colour, to say what error it stands for.

    Returns:
        `str`: Markdown (``""`` without a factor).

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty_calibration import error_bound_legend
        >>> text = error_bound_legend(8.0, 0.01)
        >>> text.startswith("Error bound: **8 x the map**"), text.endswith("stands for errors up to 0.08.")
        (True, True)
        >>> error_bound_legend(None)
        ''
    """
    if error_bound_90 is None:
        return ""
    text = (
        f"Error bound: **{error_bound_90:.3g} x the map** bounds the per-pixel error |output - truth| (0..1 scale, "
        "mean over the channels) on about 90 % of the pixels of held-out images"
    )
    if vmax is not None and vmax > 0:
        text += f"; the top colour ({vmax:.3g}) stands for errors up to {error_bound_90 * vmax:.3g}"
    return text + "."


__all__ = [
    "BOUND_COVERAGE",
    "ERROR_BOUND_KEY",
    "ERROR_BOUND_TAG",
    "MAX_CALIBRATIONS",
    "NUM_SAMPLES_TAG",
    "SPREAD_TAG",
    "bound_coverage",
    "call_error_bound",
    "error_bound_legend",
    "check_error_bound",
    "conformal_factor",
    "error_bound_factor",
    "merge_calibration",
    "pixel_error",
    "uncertainty_tags",
]
