"""Every way to get a pipeline or a trained model: one module.

- [`load_pipeline`]: a pipeline folder written by ``save_pretrained`` (a training output is one), a Hub id,
  ``"preset:NAME"`` (randomly initialised, see [`~neurop_diff_diffusers.runtime.presets`]) or ``None`` for the
  embedded model.
- [`load_default_pipeline`]: the embedded model shipped inside the package (offline).
- [`load_trained_model`] / [`load_frozen_operator`]: one trained component (UNet, neural operator) named by a
  training argument: a folder holding it, a training output or checkpoint holding it in a subfolder, or a Hub id.

Example:
    >>> from neurop_diff_diffusers.runtime.loading import load_pipeline
    >>> load_pipeline("preset:tiny").unet.config.in_channels
    6
"""

from __future__ import annotations

import math
import os
from numbers import Real
from pathlib import Path
from typing import Any

import torch

from ..file_safety import load_json_file, loads_bounded, printable
from ..models.neural_operator import GalerkinNeuralOperator
from ..pipelines.data_consistency import MAX_BACK_PROJECTION_STEPS
from ..pipelines.pipeline_neurop_diff import NeurOpDiffPipeline
from ..pipelines.uncertainty_calibration import ERROR_BOUND_KEY, check_error_bound
from ..utils import TrainingSetupError, check_device

#: Prefix of a preset in a pipeline spec: ``"preset:tiny"``.
PRESET_PREFIX = "preset:"

#: Folder of the embedded pipeline (``save_pretrained`` layout) inside the installed package.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "weights" / "neurop-diff-ucmerced"


#: ``model_index.json``'s ``_class_name`` of a NeurOp-Diff pipeline folder: plain, and hub-ready (remote-code layout).
PIPELINE_CLASS_NAMES = ("NeurOpDiffPipeline", ["pipeline_neurop_diff", "NeurOpDiffPipeline"])

#: Sane ranges of the integer fields of the component configs, checked from the JSON before any weight is allocated
#: (a hostile or damaged folder could ask for channels of 1e9 or 1e12 timesteps). ``None`` is allowed where listed.
_INT_RANGES: dict[str, dict[str, tuple[int, int, bool]]] = {
    "unet": {
        "in_channels": (1, 64, False),
        "out_channels": (1, 32, False),
        "layers_per_block": (1, 16, False),
        "norm_num_groups": (1, 1024, False),
        "attn_norm_num_groups": (1, 1024, True),
        "attention_head_dim": (1, 8192, True),
        "time_embedding_dim": (1, 65536, True),
        "num_class_embeds": (1, 100_000, True),
        "num_train_timesteps": (1, 100_000, True),
        "downsample_padding": (0, 8, False),
        "freq_shift": (0, 100_000, False),
    },
    "neural_operator": {
        "in_channels": (1, 32, False),
        "out_channels": (1, 32, False),
        "encoder_channels": (1, 4096, False),
        "encoder_num_blocks": (0, 256, False),
        "width": (1, 8192, False),
        "num_heads": (1, 1024, False),
        "num_galerkin_blocks": (0, 64, False),
        "head_channels": (1, 8192, False),
    },
    "scheduler": {
        "num_train_timesteps": (1, 100_000, False),
        "steps_offset": (0, 100_000, False),
        "solver_order": (1, 3, False),
    },
}
#: The scheduler settings that are names: the values every diffusers scheduler that ``--scheduler`` offers takes.
_SCHEDULER_CHOICES = {
    "prediction_type": ("epsilon", "sample", "v_prediction"),
    "timestep_spacing": ("leading", "trailing", "linspace"),
}
#: The scheduler settings that are switches (JSON true / false).
_SCHEDULER_FLAGS = ("clip_sample", "thresholding", "set_alpha_to_one", "rescale_betas_zero_snr")
#: The scheduler settings that are numbers, and their range: ``(low, high, high included)``, low excluded.
_SCHEDULER_NUMBERS = {
    "clip_sample_range": (0.0, math.inf, False),
    "sample_max_value": (0.0, math.inf, False),
    "dynamic_thresholding_ratio": (0.0, 1.0, True),
}


def _check_scheduler(config: dict[str, Any], path: Path, scheduler_cls: type) -> None:
    """The scheduler config's names, switches and numbers (``beta_schedule`` by building the scheduler from it: the
    schedules differ by class), so that a damaged value is refused here rather than as a traceback or NaN later."""
    for key, allowed in _SCHEDULER_CHOICES.items():
        if key in config and config[key] not in allowed:
            raise _bad_config(path, key, f"one of {', '.join(allowed)}", config[key])
    for key in _SCHEDULER_FLAGS:
        if key in config and not isinstance(config[key], bool):
            raise _bad_config(path, key, "true or false", config[key])
    for key, (low, high, closed) in _SCHEDULER_NUMBERS.items():
        value = config.get(key, high if closed else low + 1.0)
        inside = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        if not (inside and low < value and (value <= high if closed else value < high)):
            wanted = (
                f"a number in ({low:g}, {high:g}{']' if closed else ')'}" if math.isfinite(high) else "a number > 0"
            )
            raise _bad_config(path, key, wanted, value)
    try:
        scheduler_cls.from_config(config)
    except (NotImplementedError, ValueError, TypeError) as error:
        reason = str(error).splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`pipeline` {printable(path)}: not a valid {scheduler_cls.__name__} config ({reason}); the model folder "
            "is damaged."
        ) from None


#: The largest safetensors header read (the JSON that lists the tensors: a few kB for our models).
_MAX_WEIGHTS_HEADER_BYTES = 16 * 1024 * 1024
#: Bytes per value of the safetensors dtypes a model's weights may have (floating point only: integer "weights" would
#: be cast to float silently, turning a damaged header into a wrong model).
_WEIGHT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def _check_weights(component: Path, blobs: Path | None) -> dict[str, tuple[Path, list[int]]]:
    """A component's safetensors files, from their headers alone (nothing else is read): at least one, never through a
    link (but a Hub snapshot's into its blobs), the header within its budget and inside the file, and every tensor of
    a floating-point dtype whose shape matches its byte range, which lies inside the file. Returns each tensor's file
    (as named in the folder) and shape."""
    import struct

    shapes = {}

    files = sorted(component.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"`pipeline` {printable(component)} holds no .safetensors weights (only safetensors files are loaded); "
            "the model folder is incomplete."
        )
    for named in files:
        path = _hub_blob(named, blobs)

        def damaged(reason: str, path: Path = path) -> ValueError:
            return ValueError(f"`pipeline` {printable(path)}: {reason}; the model folder is damaged.")

        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as error:
            reason = "a symbolic link: not followed" if path.is_symlink() else f"not readable ({error})"
            raise damaged(reason) from None
        with os.fdopen(fd, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            first = file.read(8)
            if len(first) < 8:
                raise damaged(f"{size} bytes, too short for a safetensors file")
            (length,) = struct.unpack("<Q", first)
            if length > _MAX_WEIGHTS_HEADER_BYTES or 8 + length > size:
                raise damaged(
                    f"its header claims {length} bytes in a file of {size} (at most {_MAX_WEIGHTS_HEADER_BYTES})"
                )
            try:
                text = file.read(length).decode("utf-8")
            except UnicodeDecodeError:
                raise damaged("its header is not UTF-8 text") from None
        try:
            header = loads_bounded(text, "its header", max_depth=_MAX_CONFIG_DEPTH)
        except ValueError as error:
            raise damaged(str(error)) from None
        if not isinstance(header, dict):
            raise damaged("its header is not a JSON object")
        data_size = size - 8 - length
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = entry.get("dtype") if isinstance(entry, dict) else None
            shape = entry.get("shape") if isinstance(entry, dict) else None
            offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
            if dtype not in _WEIGHT_DTYPES:
                raise damaged(f"tensor {name!r} has dtype {dtype!r}; weights must be one of {sorted(_WEIGHT_DTYPES)}")
            valid_shape = isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
            valid_offsets = (
                isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size
            )  # fmt: skip
            nbytes = math.prod(shape) * _WEIGHT_DTYPES[dtype] if valid_shape else -1
            if not (valid_offsets and nbytes == offsets[1] - offsets[0]):
                raise damaged(
                    f"tensor {name!r} of shape {shape!r} does not fit its byte range {offsets!r} in the "
                    f"{data_size} bytes of data"
                )
            shapes[name] = (named, shape)
    return shapes


def _check_shapes(folder: Path, config_path: Path, config: dict, shapes: dict[str, tuple[Path, list[int]]]) -> None:
    """The weights' shapes (from their headers) against the model that ``config_path`` describes, built on the meta
    device (no memory): a tensor of another shape is refused naming the file, the parameter and both shapes. A
    config the model cannot be built from is left to the loader, which says why."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DModel

    model_cls = UNet2DModel if config_path.parent.name == "unet" else GalerkinNeuralOperator
    try:
        with init_empty_weights():
            expected = model_cls.from_config(config).state_dict()
    except Exception:  # noqa: BLE001 - the loader reports it
        return
    for name, (file, shape) in shapes.items():
        if name in expected and list(expected[name].shape) != shape:
            raise ValueError(
                f"`pipeline` {printable(folder)}: tensor {name!r} of {printable(file.relative_to(folder))} has shape "
                f"{shape}, but {printable(config_path.relative_to(folder))} gives it {list(expected[name].shape)}; "
                "the model folder is damaged."
            )


#: Largest number of levels (``block_out_channels`` entries) and channels per level of a UNet.
_MAX_UNET_LEVELS, _MAX_UNET_CHANNELS = 8, 8192


def _bad_config(where: str, key: str, wanted: str, value: Any) -> ValueError:
    return ValueError(f"`pipeline` {where}: `{key}` must be {wanted}, got {value!r}; the model folder is damaged.")


def _check_int(config: dict, where: str, key: str, low: int, high: int, optional: bool) -> None:
    if key not in config or (optional and config[key] is None):
        return
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad_config(where, key, f"an integer in [{low}, {high}]" + (" or null" if optional else ""), value)


#: Largest JSON file of a model folder read (a real config is a few kB) and its deepest nesting.
_MAX_CONFIG_BYTES, _MAX_CONFIG_DEPTH = 1024 * 1024, 16


def _hub_blob(path: Path, blobs: Path | None) -> Path:
    """``path``, or the file its link names when ``path`` is a link of a Hub cache snapshot into the cache's own
    ``blobs`` folder (how ``huggingface_hub`` stores every file). Any other link is left to the reader, which refuses
    it."""
    if blobs is None or not path.is_symlink():
        return path
    target = path.resolve()
    if target.parent != blobs.resolve() or not target.is_file():
        raise ValueError(
            f"`pipeline` {printable(path)} is a symbolic link out of the Hub cache's blobs folder: not followed; "
            "the model folder is damaged."
        )
    return target


def _read_json_object(path: Path, blobs: Path | None = None) -> dict[str, Any]:
    path = _hub_blob(path, blobs)
    try:
        data = load_json_file(path, "`pipeline`", max_bytes=_MAX_CONFIG_BYTES, max_depth=_MAX_CONFIG_DEPTH)
    except OSError as err:
        raise ValueError(f"`pipeline` {printable(path)}: not a readable JSON file ({type(err).__name__}).") from None
    except ValueError as err:
        raise ValueError(f"{err}; the model folder is damaged.") from None
    if not isinstance(data, dict):
        raise ValueError(f"`pipeline` {path}: must hold a JSON object, got a {type(data).__name__}.")
    return data


def check_pipeline_folder(folder: str | os.PathLike, *, hub_blobs: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check a NeurOp-Diff pipeline folder from its JSON files alone, before any weight is read or allocated.

    ``model_index.json`` must be a NeurOp-Diff pipeline's (not e.g. a ``DDPMPipeline``'s), with a diffusers
    ``UNet2DModel``, a diffusers scheduler and a ``GalerkinNeuralOperator`` (or none); every size of the component
    configs must be an integer in a sane range (see ``_INT_RANGES``; no string where a number belongs), the UNet must
    take the noisy image and the prior (``in_channels = 2 * out_channels = 6``) and its ``norm_num_groups`` must
    divide every level's channels; the scheduler's betas must be numbers in ``(0, 1)``, its names
    (``prediction_type``, ``timestep_spacing``, ``beta_schedule``), switches and thresholds valid; the pipeline's
    ``default_data_consistency_steps``, when present, an integer in ``[0, 100]``; the uncertainty map's calibration
    ``uncertainty_error_bound_90``, when present, as `uncertainty_calibration.check_error_bound` allows. The weights
    are checked from their safetensors headers: floating-point tensors inside their file, each of the shape that the
    component's config gives it (the model is built on the meta device to know it).

    No file is read through a symbolic link, except in a Hub cache snapshot (``hub_blobs``), whose files are links
    into the cache's ``blobs`` folder: those links, and only those, are followed.

    Args:
        folder (`str` or `os.PathLike`): the pipeline folder.
        hub_blobs (`str` or `os.PathLike`, *optional*): the ``blobs`` folder of the Hub cache that ``folder`` is a
            snapshot of (``None``: a local folder).

    Returns:
        `dict`: the parsed ``model_index.json``.

    Raises:
        ValueError: naming the file, the field and the allowed values.
    """
    folder = Path(folder)
    blobs = None if hub_blobs is None else Path(hub_blobs)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ValueError(
            f"`pipeline` {folder} holds no model_index.json: give a folder written by save_pretrained or "
            "`neurop-diff export`, a hub id 'owner/name' or 'preset:NAME'."
        )
    index = _read_json_object(index_path, blobs)
    class_name = index.get("_class_name")
    if class_name not in PIPELINE_CLASS_NAMES:
        raise ValueError(
            f"`pipeline` {folder} is a {class_name!r} folder, not a NeurOp-Diff pipeline (model_index.json "
            "`_class_name` must be 'NeurOpDiffPipeline')."
        )
    # the pipeline's own settings that the JSON can check (a bad value would otherwise fail after the weights load)
    _check_int(index, index_path, "default_data_consistency_steps", 0, MAX_BACK_PROJECTION_STEPS, optional=False)
    try:
        check_error_bound(index.get(ERROR_BOUND_KEY))
    except ValueError as error:
        raise ValueError(f"`pipeline` {index_path}: {error}") from None
    expected = {"unet": ["diffusers", "UNet2DModel"]}
    if index.get("unet") != expected["unet"]:
        raise _bad_config(index_path, "unet", '["diffusers", "UNet2DModel"]', index.get("unet"))
    scheduler = index.get("scheduler")
    if not (isinstance(scheduler, list) and len(scheduler) == 2 and scheduler[0] == "diffusers"):
        raise _bad_config(index_path, "scheduler", '["diffusers", <a diffusers scheduler>]', scheduler)
    import diffusers

    scheduler_cls = getattr(diffusers, str(scheduler[1]), None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, diffusers.SchedulerMixin)):
        raise _bad_config(index_path, "scheduler", "a diffusers scheduler class", scheduler)
    operator = index.get("neural_operator")
    has_operator = operator not in (None, [None, None])
    if has_operator and not (
        isinstance(operator, list) and len(operator) == 2 and operator[1] == "GalerkinNeuralOperator"
    ):
        raise _bad_config(index_path, "neural_operator", '[..., "GalerkinNeuralOperator"] or null', operator)
    files = {"unet": folder / "unet" / "config.json", "scheduler": folder / "scheduler" / "scheduler_config.json"}
    if has_operator:
        files["neural_operator"] = folder / "neural_operator" / "config.json"
    configs, shapes = {}, {}
    for component, path in files.items():
        if not path.is_file():
            raise ValueError(f"`pipeline` {folder}: {path.relative_to(folder)} is missing; the folder is incomplete.")
        configs[component] = config = _read_json_object(path, blobs)
        if component != "scheduler":
            shapes[component] = _check_weights(path.parent, blobs)
        for key, (low, high, optional) in _INT_RANGES[component].items():
            _check_int(config, path, key, low, high, optional)
    unet, unet_path = configs["unet"], files["unet"]
    channels = unet.get("block_out_channels")
    if not (
        isinstance(channels, list)
        and 1 <= len(channels) <= _MAX_UNET_LEVELS
        and all(not isinstance(c, bool) and isinstance(c, int) and 1 <= c <= _MAX_UNET_CHANNELS for c in channels)
    ):
        raise _bad_config(
            unet_path, "block_out_channels", f"1 to {_MAX_UNET_LEVELS} integers in [1, {_MAX_UNET_CHANNELS}]", channels
        )
    groups = unet.get("norm_num_groups", 32)
    if any(c % groups for c in channels):
        raise _bad_config(unet_path, "norm_num_groups", f"a divisor of every block_out_channels {channels}", groups)
    for key in ("down_block_types", "up_block_types"):
        types = unet.get(key)
        if not (isinstance(types, list) and len(types) == len(channels) and all(isinstance(t, str) for t in types)):
            raise _bad_config(unet_path, key, f"{len(channels)} block names (one per block_out_channels)", types)
    if unet.get("out_channels") != 3 or unet.get("in_channels") != 6:
        raise ValueError(
            f"`pipeline` {folder}: its UNet takes {unet.get('in_channels')} input and {unet.get('out_channels')} "
            "output channels; a NeurOp-Diff UNet takes the noisy image and the prior (6) and predicts RGB (3): "
            "this is not a NeurOp-Diff model."
        )
    sched, sched_path = configs["scheduler"], files["scheduler"]
    for key in ("beta_start", "beta_end"):
        value = sched.get(key, 0.5)
        if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and 0 < value < 1):
            raise _bad_config(sched_path, key, "a number in (0, 1)", value)
    trained = sched.get("trained_betas")
    if trained is not None and not (
        isinstance(trained, list)
        and len(trained) == sched.get("num_train_timesteps", len(trained))
        and all(not isinstance(b, bool) and isinstance(b, Real) and math.isfinite(b) and 0 < b < 1 for b in trained)
    ):
        shown = trained if not isinstance(trained, list) else f"a list of {len(trained)} values"
        raise _bad_config(sched_path, "trained_betas", "null or one number in (0, 1) per training timestep", shown)
    _check_scheduler(sched, sched_path, scheduler_cls)
    if has_operator:
        op, op_path = configs["neural_operator"], files["neural_operator"]
        if op.get("in_channels", 3) != 3 or op.get("out_channels", 3) != 3:
            raise _bad_config(
                op_path, "in_channels / out_channels", "3 (RGB)", [op.get("in_channels"), op.get("out_channels")]
            )
        if op.get("width", 256) % op.get("num_heads", 16):
            raise _bad_config(op_path, "num_heads", f"a divisor of width {op.get('width', 256)}", op.get("num_heads"))
    for component, component_shapes in shapes.items():
        _check_shapes(folder, files[component], configs[component], component_shapes)
    return index


#: The pipeline's own ``model_index.json`` settings (its ``register_to_config`` arguments besides the components).
_PIPELINE_OPTIONS = (
    "default_strength",
    "residual",
    "default_eta",
    "default_data_consistency_steps",
    ERROR_BOUND_KEY,
)


def _load_hub_ready_folder(folder: Path, index: dict[str, Any], torch_dtype: torch.dtype | None) -> NeurOpDiffPipeline:
    """A hub-ready (remote-code layout) folder loaded with this package's own classes: its ``.py`` files are not run
    (``trust_remote_code`` is not needed, the weights and configs are the same)."""
    import diffusers
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet")
    operator = None
    if index.get("neural_operator") not in (None, [None, None]):
        operator = GalerkinNeuralOperator.from_pretrained(folder / "neural_operator")
    scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(folder / "scheduler")
    options = {k: index[k] for k in _PIPELINE_OPTIONS if k in index}
    pipeline = NeurOpDiffPipeline(unet=unet, neural_operator=operator, scheduler=scheduler, **options)
    return pipeline if torch_dtype is None else pipeline.to(dtype=torch_dtype)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~")) and "\\" not in spec


def _local_pipeline_folder(spec: str) -> tuple[Path, Path | None]:
    """The local folder of ``spec``: the folder itself, or the hub id's snapshot (downloaded, or from the cache
    offline) holding only a pipeline's JSON files and safetensors weights; with the cache's ``blobs`` folder, which
    the snapshot's files link to (``None`` for a local folder)."""
    local = Path(spec).expanduser()
    if os.path.lexists(local):
        if not local.is_dir():
            raise ValueError(
                f"`pipeline` {spec!r} is a file, not a pipeline folder: give a folder written by save_pretrained or "
                "`neurop-diff export` (with model_index.json), a hub id 'owner/name' or 'preset:NAME'."
            )
        return local, None
    if not _looks_like_hub_id(spec):
        raise ValueError(f"`pipeline` {spec!r}: no such folder (and not a hub id 'owner/name' or 'preset:NAME').")
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", "*/config.json", "*/scheduler_config.json", "*/*.safetensors"]
    try:
        snapshot = Path(snapshot_download(spec, allow_patterns=patterns))
    except Exception as err:  # offline, not cached, no such repository, gated, network errors: one line
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"`pipeline` {spec!r}: no such folder, and the hub id could not be loaded (not in the local cache and "
            f"the Hub not reachable, or no such model): {type(err).__name__}: {reason[:200]}"
        ) from None
    return snapshot, snapshot.parent.parent / "blobs"  # <cache>/models--owner--name/snapshots/<revision>


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
        >>> from neurop_diff_diffusers.runtime.loading import load_pipeline
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
        folder, blobs = _local_pipeline_folder(spec)
        index = check_pipeline_folder(folder, hub_blobs=blobs)
        if isinstance(index["_class_name"], list):  # hub-ready: loaded with this package's classes
            pipeline = _load_hub_ready_folder(folder, index, torch_dtype)
        else:
            kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
            pipeline = NeurOpDiffPipeline.from_pretrained(folder, **kwargs)
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
    "check_pipeline_folder",
    "has_default_model",
    "load_default_pipeline",
    "load_frozen_operator",
    "load_pipeline",
    "load_trained_model",
]
