"""The options of a scene run, checked once: [`SceneOptions`].

Window, halo, value range, seed, workers, progress, resume and process split, the bands through the model, the
uncertainty samples and the pipeline call's other keyword arguments travel together in one frozen object from
[`~neurop_diff_diffusers.jobs.scene.upscale_scene`] down to the windows, instead of as a forwarded keyword list.

Example:
    >>> options = SceneOptions.from_kwargs(window=128, value_range="p2,p98", num_inference_steps=20)
    >>> options.window, str(options.value_range), dict(options.pipe_kwargs)
    (128, 'p2,p98', {'num_inference_steps': 20})
    >>> SceneOptions(workers=0)
    Traceback (most recent call last):
    ...
    ValueError: `workers` must be None (one window per intra-op thread) or an int >= 1, got 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ...pipelines.uncertainty import check_num_samples
from ..stopping import check_stop_flag
from .plan import DEFAULT_HALO, DEFAULT_WINDOW, check_window
from .statistics import ValueRange, parse_value_range

#: Pipeline arguments that the engine sets for each window itself (never passed through).
_PER_WINDOW = ("generator", "output_size", "output_type", "prior")


@dataclass(frozen=True)
class SceneOptions:
    """How a scene is run; every field is checked when the object is made (one ``ValueError`` / ``TypeError``
    naming the argument and its allowed range, before any work).

    Args:
        rgb_bands (`tuple[int, ...]`, defaults to `(1, 2, 3)`): the three 1-based bands that go through the model
            (a one-band scene goes through as grey; other bands are upscaled bicubically).
        window (`int`, defaults to `DEFAULT_WINDOW`): LR pixels of a window's core, a side (>= 8).
        halo (`int`, defaults to `DEFAULT_HALO`): LR pixels of context on every side (``0`` to ``window``).
        value_range (`str | ValueRange | None`, *optional*): ``"minmax"`` (default), ``"LOW,HIGH"`` or
            ``"pLOW,pHIGH"`` ([`~neurop_diff_diffusers.jobs.scene.statistics.parse_value_range`]).
        clip (`bool`, defaults to `False`): write values outside the value range clipped to it. By default the model
            sees them clipped, and their part outside the range (input minus clipped input) is upscaled bicubically
            and added back, so that the output keeps the input's extremes.
        seed (`int`, defaults to `0`): the seed of the windows' noise.
        restart (`bool`, defaults to `False`): discard a journal of other settings instead of refusing.
        workers (`int | None`, *optional*): windows computed at once in threads (CPU, >= 1); ``None``: torch's
            intra-op thread count.
        progress (`Callable[[int, int], Any] | None`, *optional*): ``progress(total, done)``, in denoising steps
            (windows x steps per window), returns an object with ``update(n)`` and ``close()`` (e.g.
            [`~neurop_diff_diffusers.jobs.scene.engine.tqdm_progress`]).
        distributed (`bool`, defaults to `False`): split the windows between ``accelerate launch`` processes.
        stop (`Any`, *optional*): a stop flag (``is_set()``, e.g. ``threading.Event``) checked after every denoising
            step: once set, the run ends within the steps in flight, keeps the finished windows (the same call
            resumes) and raises [`~neurop_diff_diffusers.jobs.stopping.RunStopped`] without writing an output.
        num_samples (`int | None`, *optional*): 2 to 64 samples per window: the output is their mean and their
            spread is written as the uncertainty map (not with ``prior_only``).
        pipe_kwargs (`Mapping[str, Any]`, *optional*): the pipeline call's other keyword arguments
            (``num_inference_steps``, ``strength``, ``prior_only``, ``chunk_size``, ...); ``None`` values are left
            out (except ``strength``).
    """

    rgb_bands: tuple[int, ...] = (1, 2, 3)
    window: int = DEFAULT_WINDOW
    halo: int = DEFAULT_HALO
    value_range: ValueRange | str | None = None
    clip: bool = False
    seed: int = 0
    restart: bool = False
    workers: int | None = None
    progress: Callable[[int, int], Any] | None = None
    distributed: bool = False
    stop: Any = None
    num_samples: int | None = None
    pipe_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bands = self.rgb_bands
        if not isinstance(bands, (tuple, list)) or len(bands) != 3 or not all(_is_int(b) and b >= 1 for b in bands):
            raise ValueError(f"`rgb_bands` must be three 1-based band numbers (ints >= 1), got {bands!r}.")
        check_window(self.window, self.halo)
        if not _is_int(self.seed):
            raise ValueError(f"`seed` must be an int, got {self.seed!r}.")
        if self.workers is not None and not (_is_int(self.workers) and self.workers >= 1):
            raise ValueError(
                f"`workers` must be None (one window per intra-op thread) or an int >= 1, got {self.workers!r}."
            )
        for name in ("restart", "distributed", "clip"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {type(getattr(self, name)).__name__}.")
        if self.progress is not None and not callable(self.progress):
            raise TypeError(
                f"`progress` must be None or a callable (total, done), got {type(self.progress).__name__}."
            )
        check_stop_flag(self.stop)
        if not isinstance(self.pipe_kwargs, Mapping):
            raise TypeError(f"`pipe_kwargs` must be a mapping, got {type(self.pipe_kwargs).__name__}.")
        for key in self.pipe_kwargs:
            if key in _PER_WINDOW or key in _FIELDS:
                where = (
                    "is set for each window by the scene engine" if key in _PER_WINDOW else "is a SceneOptions field"
                )
                raise TypeError(f"`pipe_kwargs` must not hold `{key}`: it {where}.")
        num_samples = check_num_samples(self.num_samples)
        if num_samples is not None and self.pipe_kwargs.get("prior_only"):
            raise ValueError("`num_samples` needs diffusion samples; it cannot go with `prior_only=True`.")
        kwargs = {k: v for k, v in self.pipe_kwargs.items() if v is not None or k == "strength"}
        object.__setattr__(self, "rgb_bands", tuple(int(b) for b in bands))
        object.__setattr__(self, "value_range", parse_value_range(self.value_range))
        object.__setattr__(self, "num_samples", num_samples)
        object.__setattr__(self, "pipe_kwargs", MappingProxyType(kwargs))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SceneOptions:
        """Options from the keyword arguments of [`~neurop_diff_diffusers.jobs.scene.upscale_scene`]: the field
        names, ``generator`` (its initial seed is the ``seed`` when none is given) and the pipeline's arguments."""
        return cls().updated(**kwargs)

    def updated(self, **kwargs: Any) -> SceneOptions:
        """These options with some fields replaced and pipeline arguments added (checked again).

        ``seed=None`` (or no ``seed``) keeps the seed, unless a ``torch.Generator`` is passed as ``generator``: then
        its initial seed is the seed (the windows draw their own noise from it).
        """
        generator = kwargs.pop("generator", None)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
        if kwargs.get("seed") is None:
            kwargs["seed"] = int(generator.initial_seed()) if generator is not None else self.seed
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
        if "pipe_kwargs" in fields:
            kwargs = {**fields.pop("pipe_kwargs"), **kwargs}
        return dataclasses.replace(self, **fields, pipe_kwargs={**self.pipe_kwargs, **kwargs})

    @property
    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of each window's pipeline call: ``pipe_kwargs``, with ``num_samples`` when set."""
        samples = {} if self.num_samples is None else {"num_samples": self.num_samples}
        return {**self.pipe_kwargs, **samples}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FIELDS = frozenset(f.name for f in dataclasses.fields(SceneOptions))
