"""Every way to get a pipeline or a trained model: one module.

- [`load_pipeline`]: a pipeline folder written by ``save_pretrained`` (a training output is one), a Hub id,
  ``"preset:NAME"`` (randomly initialised, see [`~neurop_diff_diffusers.presets`]) or ``None`` for the embedded model.
- [`load_default_pipeline`]: the embedded model shipped inside the package (offline).
- [`load_trained_model`] / [`load_frozen_operator`]: one trained component (UNet, neural operator) named by a
  training argument: a folder holding it, a training output or checkpoint holding it in a subfolder, or a Hub id.

Example:
    >>> from neurop_diff_diffusers.loading import load_pipeline
    >>> load_pipeline("preset:tiny").unet.config.in_channels
    6
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .models.neural_operator import GalerkinNeuralOperator
from .pipelines.pipeline_neurop_diff import NeurOpDiffPipeline
from .utils import TrainingSetupError, check_device

#: Prefix of a preset in a pipeline spec: ``"preset:tiny"``.
PRESET_PREFIX = "preset:"

#: Folder of the embedded pipeline (``save_pretrained`` layout) inside the installed package.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "neurop-diff-ucmerced"


def has_default_model() -> bool:
    """Whether this installation ships the embedded model."""
    return (DEFAULT_MODEL_PATH / "model_index.json").is_file()


def load_default_pipeline(
    device: str | torch.device | None = None, torch_dtype: torch.dtype | None = None
) -> NeurOpDiffPipeline:
    """The embedded default model as a [`NeurOpDiffPipeline`], loaded offline from ``DEFAULT_MODEL_PATH``.

    Args:
        device (`str` or `torch.device`, *optional*): where to move the pipeline (default: CPU).
        torch_dtype (`torch.dtype`, *optional*): e.g. ``torch.float16`` on a GPU.

    Raises:
        ValueError: if ``device`` is not available on this machine (the message lists the available ones).
        FileNotFoundError: if this installation ships no embedded model.

    Example:
        >>> from neurop_diff_diffusers import has_default_model, load_default_pipeline
        >>> pipe = load_default_pipeline() if has_default_model() else None
    """
    if device is not None:
        device = check_device(device)
    if not has_default_model():
        raise FileNotFoundError(
            f"No embedded model ships with this version (looked in {DEFAULT_MODEL_PATH}). Pass a trained pipeline "
            "folder or hub id instead (CLI: --model PATH_OR_HUB_ID; 'preset:tiny' gives an untrained one)."
        )
    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    pipe = NeurOpDiffPipeline.from_pretrained(DEFAULT_MODEL_PATH, **kwargs)
    return pipe.to(device) if device is not None else pipe


def load_pipeline(
    spec: str | os.PathLike | None,
    *,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    preset_seed: int = 0,
) -> NeurOpDiffPipeline:
    """Load a [`NeurOpDiffPipeline`] from a folder, a hub id, a preset (``"preset:tiny"``) or the embedded model.

    Presets are randomly initialised (seed `preset_seed`): their outputs are noise-like, useful for smoke runs and
    timings, not for quality numbers.

    Args:
        spec (`str`, `os.PathLike` or `None`): ``"preset:<name>"``, a local folder written by ``save_pretrained``
            (e.g. the output folder of ``training/train_neurop_diff.py``), a hub id, or ``None`` for the embedded
            model ([`load_default_pipeline`]).
        device (`str` or `torch.device`, *optional*): where to move the pipeline.
        torch_dtype (`torch.dtype`, *optional*): e.g. ``torch.float16`` on a GPU.
        preset_seed (`int`, defaults to 0): initialisation seed of a preset.

    Returns:
        [`NeurOpDiffPipeline`]: the pipeline, its progress bars disabled.

    Raises:
        ValueError: an empty spec or an unknown preset (the message lists the presets).

    Example:
        >>> from neurop_diff_diffusers.loading import load_pipeline
        >>> load_pipeline("preset:tiny").unet.config.in_channels
        6
    """
    if spec is None:
        pipeline = load_default_pipeline(device=device, torch_dtype=torch_dtype)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"`pipeline` must be a folder, a hub id or 'preset:<name>', got {spec!r}.")
    if spec.startswith(PRESET_PREFIX):
        from .presets import PRESETS, build_pipeline

        name = spec[len(PRESET_PREFIX) :]
        if name not in PRESETS:
            raise ValueError(f"`pipeline` names an unknown preset {name!r}; presets: {sorted(PRESETS)}.")
        pipeline = build_pipeline(name, seed=preset_seed)
        if torch_dtype is not None:
            pipeline = pipeline.to(dtype=torch_dtype)
    else:
        kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
        pipeline = NeurOpDiffPipeline.from_pretrained(spec, **kwargs)
    if device is not None:
        pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_trained_model(
    model_cls: type,
    path: str | os.PathLike,
    *,
    argument: str,
    default_subfolder: str,
    hint: str,
    subfolder: str | None = None,
    hub_subfolder: str | None = None,
) -> Any:
    """Load a trained ``model_cls`` (a diffusers ``ModelMixin``) named by a training argument.

    `path` is a local folder holding the model (``config.json``), or a folder holding it in `default_subfolder` (a
    saved pipeline or a run's output folder), or a Hub model id (loaded from `subfolder`, else `hub_subfolder`).

    Args:
        model_cls (`type`): the class to load.
        path (`str` or `os.PathLike`): the argument's value.
        argument (`str`): the argument's name (e.g. ``"--neural_operator_path"``), for the error messages.
        default_subfolder (`str`): where a local folder without ``config.json`` holds the model.
        hint (`str`): what to pass instead, appended to the "nothing saved there" message.
        subfolder (`str`, *optional*): an explicit subfolder inside `path` (local or Hub).
        hub_subfolder (`str`, *optional*): the Hub subfolder when `subfolder` is ``None``.

    Raises:
        TrainingSetupError: nothing loadable there; the message names `argument`.

    Example:
        >>> import tempfile
        >>> from diffusers import UNet2DModel
        >>> from neurop_diff_diffusers import build_unet
        >>> folder = tempfile.mkdtemp()
        >>> build_unet("tiny").save_pretrained(f"{folder}/unet")  # as in a saved pipeline
        >>> unet = load_trained_model(UNet2DModel, folder, argument="--unet", default_subfolder="unet", hint="")
        >>> unet.config.in_channels
        6
    """
    local = Path(path).expanduser()
    try:
        if local.is_dir():
            folder = local / subfolder if subfolder else local
            if not (folder / "config.json").is_file() and subfolder is None:
                folder = local / default_subfolder
            if not (folder / "config.json").is_file():
                raise TrainingSetupError(
                    f"`{argument}` {str(path)!r} holds no saved {model_cls.__name__} (no config.json there or in its "
                    f"{default_subfolder}/ subfolder): {hint}."
                )
            return model_cls.from_pretrained(folder)
        if str(path).startswith((".", "/", "~")) or str(path).count("/") != 1 or local.exists():
            raise TrainingSetupError(
                f"`{argument}` {str(path)!r}: no such folder (and not a Hub id of the form 'owner/name')."
            )
        return model_cls.from_pretrained(str(path), subfolder=subfolder if subfolder is not None else hub_subfolder)
    except TrainingSetupError:
        raise
    except Exception as err:
        raise TrainingSetupError(
            f"`{argument}` {str(path)!r} is not a local folder and could not be loaded from the Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
        ) from None


def load_frozen_operator(
    path: str | os.PathLike, subfolder: str | None = None, device: torch.device | str | None = None
) -> GalerkinNeuralOperator:
    """Load a trained [`GalerkinNeuralOperator`] for stage 2, frozen (no gradients) and in eval mode.

    `path` is a local folder holding the operator (``config.json``), or a stage-1 output folder or checkpoint
    holding it in ``neural_operator/``, or a Hub model id.

    Args:
        path (`str` or `os.PathLike`): the ``--neural_operator_path``.
        subfolder (`str`, *optional*): the ``--neural_operator_subfolder`` inside `path` (local or Hub).
        device (`str` or `torch.device`, *optional*): where to put it.

    Raises:
        TrainingSetupError: nothing loadable there; the message names ``--neural_operator_path``.
    """
    operator = load_trained_model(
        GalerkinNeuralOperator,
        path,
        argument="--neural_operator_path",
        default_subfolder="neural_operator",
        hint="pass the output folder of train_neural_operator.py",
        subfolder=subfolder,
    )
    operator.requires_grad_(False)
    operator.eval()
    return operator.to(device) if device is not None else operator


__all__ = [
    "DEFAULT_MODEL_PATH",
    "PRESET_PREFIX",
    "has_default_model",
    "load_default_pipeline",
    "load_frozen_operator",
    "load_pipeline",
    "load_trained_model",
]
