"""The evaluation protocol's settings: the scales of the paper's tables, the training distribution's range, and
[`EvaluationSettings`], an evaluation's settings checked once (one ValueError naming the argument, before any work).

Example:
    >>> from neurop_diff_diffusers.evaluation.settings import DEFAULT_SCALES, MAX_IN_DISTRIBUTION_SCALE
    >>> [s for s in DEFAULT_SCALES if s > MAX_IN_DISTRIBUTION_SCALE]
    [9.0, 10.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from ..metrics.quality import PROTOCOLS
from ..pipelines.data_consistency import check_back_projection_steps
from ..pipelines.scheduling import check_eta, check_strength
from .methods import EVALUATION_METHODS, METHODS

#: Scales of the paper's continuous-SR table (Table 3): 2 to 8 in the training distribution, 9 and 10 out of it.
DEFAULT_SCALES: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0)
#: Largest scale of the training distribution (docs/method.md section 1: `s ~ U(1, 8]`).
MAX_IN_DISTRIBUTION_SCALE = 8.0
_MIN_RESOLUTION = 16
#: Smallest LR side of the protocol (the antialiased bicubic degradation needs 2 px).
_MIN_LR_SIDE = 2


@dataclass(frozen=True)
class EvaluationSettings:
    """The settings of an evaluation that need neither a pipeline nor images, checked and normalised when built: an
    instance is valid, so the command line builds one before loading anything and passes it on
    ([`~neurop_diff_diffusers.evaluation.run.evaluate_with_settings`]) instead of checking the arguments again.

    What depends on the pipelines (which methods they allow, the scheduler's number of training steps, the defaults
    of `strength`, `eta` and `data_consistency_steps`) and on the images (`figure_image` below their number) is
    checked when the evaluation starts. `dataclasses.replace` checks the new values too.

    Args:
        scales (`Sequence[float]`, defaults to [`DEFAULT_SCALES`]): distinct finite numbers > 1 (kept as a tuple of
            floats).
        methods (`Sequence[str]`, *optional*): distinct names of [`~neurop_diff_diffusers.evaluation.methods.METHODS`]
            (kept as a tuple in table order); `None`: all that the pipelines allow.
        num_inference_steps (`int`, defaults to 50): an int >= 1.
        strength (`float`, *optional*): in `(0, 1]`; `None`: the pipeline's `default_strength`.
        eta (`float`, *optional*): in `[0, 1]`; `None`: the pipeline's `default_eta`.
        seed (`int`, defaults to 0): an int >= 0.
        resolution (`int`, defaults to 256): the HR side, large enough for the SSIM window after the protocol's shave.
        protocol (`str`, defaults to `"rgb"`): a key of [`~neurop_diff_diffusers.metrics.quality.PROTOCOLS`].
        max_images (`int`, *optional*): an int >= 1.
        chunk_size (`int`, *optional*): an int >= 1.
        figure_image (`int` or `Sequence[int]`, *optional*, defaults to 0): an int >= 0 or distinct ones (kept as a
            tuple), below `max_images` when both are given; `None`: no figures.
        data_consistency_steps (`int`, *optional*): the back-projection iterations; `None`: the pipeline's default.
        compute_lpips (`bool`, defaults to `True`): compute LPIPS when its weights are local.
        compute_niqe (`bool`, defaults to `True`): compute NIQE when possible.

    Raises:
        ValueError: naming the first argument that is wrong and what it must be.

    Example:
        >>> from neurop_diff_diffusers.evaluation.settings import EvaluationSettings
        >>> settings = EvaluationSettings(scales=[4, 2.5], methods=["neurop_diff", "bicubic"], figure_image=[2, 0])
        >>> settings.scales, settings.methods, settings.figure_image
        ((4.0, 2.5), ('bicubic', 'neurop_diff'), (2, 0))
        >>> EvaluationSettings(scales=[0.5])
        Traceback (most recent call last):
        ...
        ValueError: `scales` must hold numbers > 1 (super-resolution factors), got 0.5.
    """

    scales: Sequence[float] = DEFAULT_SCALES
    methods: Sequence[str] | None = None
    num_inference_steps: int = 50
    strength: float | None = None
    eta: float | None = None
    seed: int = 0
    resolution: int = 256
    protocol: str = "rgb"
    max_images: int | None = None
    chunk_size: int | None = None
    figure_image: int | Sequence[int] | None = 0
    data_consistency_steps: int | None = None
    compute_lpips: bool = True
    compute_niqe: bool = True

    def __post_init__(self) -> None:
        scales = tuple(_check_scales(list(self.scales) if isinstance(self.scales, (tuple, list)) else self.scales))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"`protocol` must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}.")
        checked: dict[str, Any] = {
            "scales": scales,
            "methods": _check_method_names(self.methods),
            "num_inference_steps": _check_int(self.num_inference_steps, "num_inference_steps", 1),
            "strength": None if self.strength is None else check_strength(self.strength),
            "eta": None if self.eta is None else check_eta(self.eta),
            "seed": _check_int(self.seed, "seed", 0),
            "resolution": _check_resolution(self.resolution, list(scales), self.protocol),
            "max_images": None if self.max_images is None else _check_int(self.max_images, "max_images", 1),
            "chunk_size": None if self.chunk_size is None else _check_int(self.chunk_size, "chunk_size", 1),
            "figure_image": _check_figure_images(self.figure_image),
            "data_consistency_steps": (
                None
                if self.data_consistency_steps is None
                else check_back_projection_steps(self.data_consistency_steps)
            ),
        }
        for name in ("compute_lpips", "compute_niqe"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        figures, max_images = checked["figure_image"], checked["max_images"]
        if figures is not None and max_images is not None and max(figures) >= max_images:
            raise ValueError(f"`figure_image`={list(figures)} must be below `max_images`={max_images}.")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def sampling(self, pipeline: Any) -> dict[str, Any]:
        """`strength`, `eta` and `data_consistency_steps` for `pipeline`: these settings, or where `None` the
        pipeline's defaults (`config.default_strength`, `default_eta`, `default_data_consistency_steps`), checked.

        Args:
            pipeline (`Any`): the pipeline (its `config`).

        Returns:
            `dict[str, Any]`: the three values.

        Example:
            >>> from neurop_diff_diffusers.evaluation.settings import EvaluationSettings
            >>> from neurop_diff_diffusers.runtime.presets import build_pipeline
            >>> EvaluationSettings(eta=0.5).sampling(build_pipeline("tiny"))
            {'strength': 1.0, 'eta': 0.5, 'data_consistency_steps': 0}
        """
        config = pipeline.config
        defaults = {
            "strength": (check_strength, config.get("default_strength", 1.0)),
            "eta": (check_eta, config.get("default_eta", 0.0)),
            "data_consistency_steps": (check_back_projection_steps, config.get("default_data_consistency_steps", 0)),
        }
        return {
            name: check(default) if getattr(self, name) is None else getattr(self, name)
            for name, (check, default) in defaults.items()
        }


def check_settings(
    scales: Any,
    *,
    num_inference_steps: Any = 50,
    seed: Any = 0,
    resolution: Any = 256,
    protocol: Any = "rgb",
    max_images: Any = None,
    chunk_size: Any = None,
    figure_image: Any = 0,
) -> dict[str, Any]:
    """The settings of earlier releases' check, as a dict: [`EvaluationSettings`] is the checked form now.

    Args:
        scales (`Any`): a non-empty list of distinct finite numbers > 1.
        num_inference_steps (`Any`, defaults to 50): an int >= 1.
        seed (`Any`, defaults to 0): an int >= 0.
        resolution (`Any`, defaults to 256): the HR side, large enough for the SSIM window after the protocol's shave.
        protocol (`Any`, defaults to `"rgb"`): a key of [`~neurop_diff_diffusers.metrics.quality.PROTOCOLS`].
        max_images (`Any`, *optional*): `None` or an int >= 1.
        chunk_size (`Any`, *optional*): `None` or an int >= 1.
        figure_image (`Any`, *optional*, defaults to 0): `None`, an int >= 0 or a non-empty list of distinct ones.

    Returns:
        `dict[str, Any]`: the same names, with `scales` as a list of floats, the ints as `int` and `figure_image` as
        `None` or a list of ints.

    Raises:
        ValueError: naming the first argument that is wrong and what it must be.

    Example:
        >>> from neurop_diff_diffusers.evaluation.settings import check_settings
        >>> check_settings((4, 2.5))["scales"]
        [4.0, 2.5]
    """
    settings = EvaluationSettings(
        scales=scales,
        num_inference_steps=num_inference_steps,
        seed=seed,
        resolution=resolution,
        protocol=protocol,
        max_images=max_images,
        chunk_size=chunk_size,
        figure_image=figure_image,
    )
    names = ("num_inference_steps", "seed", "resolution", "protocol", "max_images", "chunk_size")
    figures = settings.figure_image
    return {
        "scales": list(settings.scales),
        **{name: getattr(settings, name) for name in names},
        "figure_image": None if figures is None else list(figures),
    }


def resolve_methods(methods: Sequence[str] | None, pipeline: Any, sr3_pipeline: Any) -> list[str]:
    """The methods to run with these pipelines, in table order: `methods` (checked names, see
    [`EvaluationSettings`]) when each is available, else a ValueError saying why; `None`: every available one.

    Args:
        methods (`Sequence[str]`, *optional*): the asked methods.
        pipeline (`Any`): the NeurOp-Diff pipeline.
        sr3_pipeline (`Any`): the SR3 pipeline or `None`.

    Returns:
        `list[str]`: the methods.

    Example:
        >>> from neurop_diff_diffusers.evaluation.settings import resolve_methods
        >>> resolve_methods(None, object(), None)
        ['bicubic', 'neurop_diff']
    """
    if methods is None:
        return [m for m in METHODS if EVALUATION_METHODS[m].unavailable(pipeline, sr3_pipeline) is None]
    for method in METHODS:
        reason = EVALUATION_METHODS[method].unavailable(pipeline, sr3_pipeline) if method in methods else None
        if reason is not None:
            raise ValueError(f"`methods` asks for {method!r} but {reason}.")
    return [m for m in METHODS if m in methods]


def _check_method_names(methods: Any) -> tuple[str, ...] | None:
    if methods is None:
        return None
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise ValueError(f"`methods` must be a non-empty list drawn from {list(METHODS)}, got {methods!r}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"`methods` has unknown entries {unknown}; choose from {list(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"`methods` has duplicates: {list(methods)}.")
    return tuple(m for m in METHODS if m in methods)


def _check_scales(scales: Any) -> list[float]:
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or len(scales) == 0:
        raise ValueError(f"`scales` must be a non-empty list of numbers > 1, got {scales!r}.")
    out = []
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(float(scale)):
            raise ValueError(f"`scales` must hold finite numbers > 1, got {scale!r}.")
        if float(scale) <= 1.0:
            raise ValueError(f"`scales` must hold numbers > 1 (super-resolution factors), got {scale!r}.")
        out.append(float(scale))
    if len(set(out)) != len(out):
        raise ValueError(f"`scales` has duplicates: {out}.")
    return out


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_figure_images(figure_image: Any) -> tuple[int, ...] | None:
    if figure_image is None:
        return None
    if isinstance(figure_image, (str, bytes)) or not isinstance(figure_image, (Integral, Sequence)):
        raise ValueError(f"`figure_image` must be None, an int >= 0 or a list of them, got {figure_image!r}.")
    positions = [figure_image] if isinstance(figure_image, Integral) else list(figure_image)
    if not positions:
        raise ValueError("`figure_image` must not be an empty list (None: no figures).")
    positions = [_check_int(p, "figure_image", 0) for p in positions]
    if len(set(positions)) != len(positions):
        raise ValueError(f"`figure_image` has duplicates: {positions}.")
    return tuple(positions)


def spread_positions(count: int, wanted: int = 3) -> list[int]:
    """`wanted` positions spread evenly over `count` images (first and last included): the images the figures show
    by default, chosen to differ (a dataset listed class by class gives images of different classes).

    Args:
        count (`int`): the number of evaluated images (>= 1).
        wanted (`int`, defaults to 3): how many positions (fewer when there are fewer images).

    Returns:
        `list[int]`: distinct increasing positions.

    Example:
        >>> from neurop_diff_diffusers.evaluation.settings import spread_positions
        >>> spread_positions(147), spread_positions(2), spread_positions(1)
        ([0, 73, 146], [0, 1], [0])
    """
    wanted = max(1, min(int(wanted), int(count)))
    if wanted == 1:
        return [0]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _check_resolution(resolution: Any, scales: list[float], protocol: str) -> int:
    resolution = _check_int(resolution, "resolution", _MIN_RESOLUTION)
    lr_side = math.floor(resolution / max(scales) + 0.5)  # data.degraded_size, before its floor of 1 px
    if lr_side < _MIN_LR_SIDE:
        raise ValueError(
            f"`scales` up to {max(scales):g} degrade the {resolution} px HR to an LR of {lr_side} px; the LR needs at "
            f"least {_MIN_LR_SIDE} px a side: at `resolution`={resolution} use scales of at most "
            f"{resolution / (_MIN_LR_SIDE - 0.5):g}, or a larger resolution."
        )
    shave = math.ceil(max(scales)) if protocol == "y" else 0
    if resolution - 2 * shave <= 11:
        raise ValueError(
            f"`resolution`={resolution} leaves no room for the 11x11 SSIM window after the border shave of "
            f"{shave} px of the {protocol!r} protocol at scale {max(scales):g}; use a larger resolution."
        )
    return resolution


__all__ = [
    "DEFAULT_SCALES",
    "MAX_IN_DISTRIBUTION_SCALE",
    "EvaluationSettings",
    "check_settings",
    "resolve_methods",
    "spread_positions",
]
