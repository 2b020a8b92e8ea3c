"""Stopping a run between denoising steps: a stop flag (any object with ``is_set()``, e.g. a ``threading.Event``)
passed down to the windows, checked after every denoising step through the pipeline's ``callback_on_step_end``.

A scene, file or batch run given a flag ends within one denoising step of the windows in flight once the flag is
set: [`step_callback`] raises [`RunStopped`] out of the pipeline call, nothing of the unfinished windows is saved,
the finished ones stay in the work folder (the same call resumes from them) and no output is written. The flag is
an argument, never global state: the CLI sets it from SIGINT / SIGTERM, the web app when a page is closed or its
Stop pressed.

Example:
    >>> import threading
    >>> stop = threading.Event()
    >>> callback = step_callback(stop)
    >>> callback(None, 0, 999, {"latents": 1})
    {'latents': 1}
    >>> stop.set()
    >>> callback(None, 1, 998, {})
    Traceback (most recent call last):
    ...
    neurop_diff_diffusers.jobs.stopping.RunStopped: stopped
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class RunStopped(Exception):
    """A run ended early because its stop flag was set (between denoising steps, or between windows / files).

    Not a ``RuntimeError``: the handlers that record a failed input or window do not catch it, so it ends the whole
    run.
    """

    def __init__(self, message: str = "stopped"):
        super().__init__(message)


def check_stop_flag(stop: Any) -> Any:
    """``stop`` checked: ``None`` or an object with an ``is_set()`` method (e.g. ``threading.Event``).

    Args:
        stop (`Any`): the stop flag.

    Raises:
        TypeError: naming ``stop``.
    """
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise TypeError(f"`stop` must be None or a flag with is_set() (threading.Event), got {type(stop).__name__}.")
    return stop


def raise_if_stopped(stop: Any) -> None:
    """Raise [`RunStopped`] when the flag ``stop`` (or ``None``: never) is set."""
    if stop is not None and stop.is_set():
        raise RunStopped()


def step_callback(
    stop: Any = None,
    on_step: Callable[[], None] | None = None,
    inner: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """A ``callback_on_step_end`` for the pipeline: calls ``inner`` (the caller's own callback, if any), then
    ``on_step()`` (e.g. a progress bar's step), then raises [`RunStopped`] when ``stop`` is set.

    Args:
        stop (`Any`, *optional*): the stop flag (``is_set()``).
        on_step (`Callable[[], None] | None`, *optional*): called after each step.
        inner (`Callable | None`, *optional*): another step callback, called first; its returned dict is returned.

    Returns:
        `Callable`: ``fn(pipe, step_index, timestep, callback_kwargs) -> dict``.
    """

    def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        outputs = inner(pipe, step, timestep, callback_kwargs) if inner is not None else callback_kwargs
        if on_step is not None:
            on_step()
        raise_if_stopped(stop)
        return outputs

    return callback
