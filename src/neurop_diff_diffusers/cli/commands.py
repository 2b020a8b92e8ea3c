"""The ``neurop-diff`` command: ``upscale``, ``serve``, ``evaluate``, ``info`` and ``export``.

Example:
    neurop-diff upscale scene.png --scale 3.7 --model preset:tiny --steps 20
    neurop-diff upscale scene.tif --scale 2.5            # a GeoTIFF keeps its georeferencing
    neurop-diff upscale --input-dir scenes/ --out-dir out/ --scale 4  # a folder; also under `accelerate launch`
    neurop-diff serve                                    # the web app on http://127.0.0.1:7860
    neurop-diff info
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..defaults import DTYPE_CHOICES, SCHEDULER_CHOICES
from ..jobs.upscale_file import (
    IMAGE_SUFFIXES,
    CLIError,
    InputFailed,
    check_input_file,
    check_not_an_input,
    check_output_location,
    file_identities,
    load_job_pipeline,
    one_line,
    os_reason,
    output_path,
    prepare_job,
    read_image_file,
    run_job,
    uncertainty_path,
)

#: ``--dtype`` and ``--scheduler`` choices: ``auto`` and the keys of `optimization.DTYPES`, and `scheduling.SCHEDULERS`
#: (written out so that parsing the command line imports no torch; a test keeps them equal).
#: The largest ``--seed``: ``torch.Generator.manual_seed`` takes 64-bit unsigned seeds.
_MAX_SEED = 2**64 - 1


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise CLIError(f"--size must be HEIGHTxWIDTH with positive integers, e.g. 512x768; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _check_flags(args: argparse.Namespace) -> None:
    """The numeric flags of ``upscale`` (torch-free, so that bad flags answer at once)."""
    if args.max_pixels < 1:
        raise CLIError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale >= 1.0):
        raise CLIError(f"--scale must be a finite number >= 1 (neurop-diff only upscales), got {args.scale:g}")
    if args.scale is not None and args.scale > math.sqrt(args.max_pixels):
        raise CLIError(
            f"--scale must be in [1, {math.sqrt(args.max_pixels):.6g}]: a larger scale exceeds --max-pixels "
            f"{args.max_pixels} even for a 1x1 input; got {args.scale:.6g}"
        )
    if not 0 <= args.seed <= _MAX_SEED:
        raise CLIError(f"--seed must be an integer in [0, 2**64 - 1 = {_MAX_SEED}], got {args.seed}")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.strength is not None and not (math.isfinite(args.strength) and 0.0 < args.strength <= 1.0):
        raise CLIError(f"--strength must be a number in (0, 1], got {args.strength}")
    if args.tile_size < 1:
        raise CLIError(f"--tile-size must be >= 1, got {args.tile_size}")
    if args.dtype == "float16" and args.device.startswith("cpu"):
        raise CLIError("--dtype float16 needs a GPU (--device cuda or mps); on a CPU use --dtype bfloat16")
    if args.tile_overlap is not None and not 0 <= args.tile_overlap <= args.tile_size // 2:
        raise CLIError(
            f"--tile-overlap must be in [0, --tile-size / 2 = {args.tile_size // 2}], got {args.tile_overlap}"
        )
    if args.output is not None and len(args.inputs) > 1:
        raise CLIError("-o/--output takes one input; use --out-dir DIR for several")
    if args.window < 8:
        raise CLIError(f"--window must be >= 8 (LR pixels), got {args.window}")
    if not 0 <= args.halo <= args.window:
        raise CLIError(f"--halo must be in [0, --window = {args.window}], got {args.halo}")
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if args.uncertainty is not None and not 2 <= args.uncertainty <= 64:
        raise CLIError(f"--uncertainty must be a number of samples in [2, 64], got {args.uncertainty}")
    if args.uncertainty is not None and args.prior_only:
        raise CLIError("--uncertainty needs diffusion samples; it cannot go with --prior-only")
    if args.data_consistency is not None and not 0 <= args.data_consistency <= 100:
        raise CLIError(f"--data-consistency must be a number of iterations in [0, 100], got {args.data_consistency}")


def _check_device(device: str) -> str:
    from ..utils import check_device

    try:
        check_device(device, name="--device")
    except ValueError as err:
        raise CLIError(one_line(err)) from err
    return device


def _warn_dtype(dtype: str, device: str) -> None:
    """One line on stderr, before any work, when ``--dtype bfloat16`` is emulated on this CPU (4.5x-72x slower)."""
    from ..runtime.hardware import slow_precision_warning

    message = slow_precision_warning(dtype, device)
    if message is not None:
        print(f"neurop-diff: warning: --dtype {message.replace('use dtype', 'use --dtype')}", file=sys.stderr)


def _optimize(pipe: Any, args: argparse.Namespace) -> None:
    """``--dtype``, ``--channels-last`` and ``--scheduler`` applied to the loaded model."""
    from ..runtime.hardware import SlowPrecisionWarning
    from ..runtime.optimization import optimize_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # said once already, before any work
        optimize_pipeline(pipe, dtype=args.dtype, channels_last=args.channels_last, scheduler=args.scheduler)


def _check_model_flags(pipe: Any, args: argparse.Namespace) -> None:
    """The flags that depend on the loaded model."""
    factor = int(getattr(pipe, "downsampling_factor", 1))
    if args.tile_size % factor:
        raise CLIError(
            f"--tile-size must be a multiple of the model's downsampling factor {factor}, got {args.tile_size}"
        )
    scheduler = getattr(pipe, "scheduler", None)
    limit = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if isinstance(limit, int) and args.steps > limit:
        raise CLIError(f"--steps must be in [1, {limit}] for this model, got {args.steps}")


def _pipe_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call's keyword arguments set by the ``upscale`` flags."""
    return {
        "num_inference_steps": args.steps,
        "strength": args.strength,
        "prior_only": args.prior_only,
        "tile_size": args.tile_size,
        "tile_overlap": args.tile_overlap,
        "max_output_pixels": args.max_pixels,
        **({"num_samples": args.uncertainty} if args.uncertainty is not None else {}),
        **({"data_consistency_steps": args.data_consistency} if args.data_consistency is not None else {}),
    }


def _report(message: str) -> None:
    print(f"neurop-diff: error: {message}", file=sys.stderr)


def cmd_upscale(args: argparse.Namespace) -> int:
    """``neurop-diff upscale``: validate everything, then load the model once and upscale each input.

    A problem with one input (unreadable, damaged, output not writable, ...) is reported on one line and that input
    skipped; the others are still written, and the exit code is 2 if any failed.
    """
    # 1. Flags and file-system checks, torch-free.
    size = _parse_size(args.size) if args.size is not None else None
    scale = args.scale
    _check_flags(args)
    _warn_dtype(args.dtype, args.device)
    if args.input_dir is not None:
        return cmd_upscale_dir(args, scale, size)
    if not args.inputs:
        raise CLIError("give INPUT files or --input-dir DIR")
    if args.recursive or args.glob is not None:
        raise CLIError("--recursive and --glob go with --input-dir DIR")
    failed = 0
    planned: list[tuple[Path, Path]] = []
    targets: dict[Path, Path] = {}
    inputs = file_identities(Path(raw) for raw in args.inputs)
    for raw in args.inputs:
        src = Path(raw)
        dst = output_path(src, scale, size, args.output, args.out_dir)
        try:
            check_input_file(src)
            written = [dst] if args.uncertainty is None else [dst, uncertainty_path(dst)]  # the map too
            for path in written:
                check_not_an_input(src, path, inputs)
                check_output_location(path, args.overwrite)
            if dst.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputFailed(f"unsupported output {dst}: use PNG, JPEG or TIFF ({', '.join(IMAGE_SUFFIXES)})")
            keys = [path.absolute().resolve() for path in written]
            for path, key in zip(written, keys):
                if key in targets:
                    raise InputFailed(f"{src}: its output {path} is also an output of {targets[key]}")
            targets.update((key, src) for key in keys)
        except InputFailed as err:
            _report(str(err))
            failed += 1
            continue
        planned.append((src, dst))

    # 2. The device, then each input decoded and validated, before the model loads.
    scene_options = _scene_options(args)
    device = _scene_device(args.device) if planned else args.device
    jobs = []
    for src, dst in planned:
        try:
            jobs.append(prepare_job(src, dst, scale, size, args.max_pixels))
        except InputFailed as err:
            _report(str(err))
            failed += 1
    if not jobs:
        return 2

    # 3. The model, once; then each input.
    pipe = load_job_pipeline(args.model, device)
    _check_model_flags(pipe, args)
    _optimize(pipe, args)
    common = _pipe_kwargs(args)
    if args.dry_run:
        return _dry_run(pipe, jobs, args, common, scene_options) or (2 if failed else 0)
    for job in jobs:
        src, dst, _, out_size = job
        try:
            run_job(pipe, job, args.seed, args.overwrite, {**common, **scene_options} if job.geo else common)
        except InputFailed as err:
            _report(str(err))
        except FileExistsError:
            _report(f"{dst} appeared while {src} was being upscaled; it was not replaced (pass --overwrite)")
        except OSError as err:
            _report(f"{src} -> {dst}: {os_reason(err) if err.errno else one_line(err)}")
        except ValueError as err:
            _report(f"{src}: {one_line(err)}")
        else:
            if _main_process():
                print(f"{src} -> {dst} ({out_size[0]}x{out_size[1]}, height x width)")
            continue
        failed += 1
    if failed and len(args.inputs) > 1:
        print(f"neurop-diff: {failed} of {len(args.inputs)} inputs failed; the others were written", file=sys.stderr)
    return 2 if failed else 0


def _main_process() -> bool:
    """Whether this is the main process (always, without ``accelerate launch``)."""
    return os.environ.get("RANK", "0") == "0"


def _scene_device(device: str) -> str:
    """``--device``; under ``accelerate launch`` (several processes) Accelerate's process state is started first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _batch_device(device)
    return _check_device(device)


def _scene_options(args: argparse.Namespace) -> dict[str, Any]:
    """The scene engine's options of a GeoTIFF input (window, halo, value range, resume, progress bar, processes)."""
    from ..jobs.scene import parse_value_range, tqdm_progress

    try:
        value_range = parse_value_range(args.value_range)
    except ValueError as err:
        raise CLIError(one_line(err).replace("`value_range`", "--value-range")) from err
    return {
        "window": args.window,
        "halo": args.halo,
        "value_range": value_range,
        "restart": args.restart,
        "workers": args.workers,
        "distributed": True,
        "progress": tqdm_progress,
    }


def _dry_run(
    pipe: Any, jobs: list[Any], args: argparse.Namespace, common: dict[str, Any], options: dict[str, Any]
) -> int:
    """``--dry-run``: the plan of each input (windows, memory, time from one window); nothing is written."""
    from ..jobs.scene import dry_run, prepare_scene

    for job in jobs:
        src, dst, geo, out_size = job
        if not geo:
            spread = "" if args.uncertainty is None else f"; uncertainty map {uncertainty_path(dst)}"
            print(f"{src} -> {dst} ({out_size[0]}x{out_size[1]}, height x width): one image, no windows{spread}")
            continue
        scene_job = prepare_scene(
            src,
            dst,
            output_size=out_size,
            window=options["window"],
            halo=options["halo"],
            value_range=options["value_range"],
            seed=args.seed,
            **common,
        )
        print(f"{src} -> {dst}\n{dry_run(pipe, scene_job, workers=options['workers'])['text']}")
    return 0


def _check_batch_flags(args: argparse.Namespace) -> None:
    """The flags of ``upscale --input-dir`` (torch-free)."""
    if args.inputs:
        raise CLIError("give either INPUT files or --input-dir DIR, not both")
    if args.output is not None:
        raise CLIError("-o/--output takes one input; with --input-dir use --out-dir DIR")
    if args.out_dir is None:
        raise CLIError("--input-dir needs --out-dir DIR (where the outputs and manifest.jsonl go)")
    if not Path(args.input_dir).is_dir():
        raise CLIError(f"--input-dir {args.input_dir} is not a folder")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise CLIError(f"--out-dir {args.out_dir} exists and is not a folder")
    inputs, outputs = Path(args.input_dir).resolve(), args.out_dir.resolve()
    if inputs == outputs:
        raise CLIError(
            f"--out-dir {args.out_dir} is --input-dir itself: its outputs would be read as inputs by the next run; "
            "choose another --out-dir (a sub-folder works)"
        )
    if inputs.is_relative_to(outputs):
        raise CLIError(
            f"--input-dir {args.input_dir} lies inside --out-dir {args.out_dir}, whose files are never inputs; "
            "choose another --out-dir"
        )
    from ..jobs.batch import MANIFEST_NAME, check_glob, check_manifest

    try:
        check_glob(args.glob)
        check_manifest(args.out_dir / MANIFEST_NAME)
    except ValueError as err:
        raise CLIError(one_line(err)) from err


#: The ``upscale`` flags that change what a batch writes: the ``settings`` of each manifest record, flag names.
_SETTING_FLAGS = {
    "model": "--model",
    "scale": "--scale",
    "size": "--size",
    "prior_only": "--prior-only",
    "steps": "--steps",
    "seed": "--seed",
    "strength": "--strength",
    "scheduler": "--scheduler",
    "dtype": "--dtype",
    "tile_size": "--tile-size",
    "tile_overlap": "--tile-overlap",
    "data_consistency": "--data-consistency",
    "uncertainty": "--uncertainty",
}


def _batch_settings(args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None) -> dict[str, Any]:
    """What a batch's outputs depend on, recorded in each manifest line: a re-run with other settings must not keep
    them as complete. A local ``--model`` is recorded as its absolute path; with ``--prior-only`` the sampler's
    settings do not matter and are not recorded. ``--uncertainty N`` and ``--data-consistency N`` are recorded only
    when given, so that the manifests of runs without them stay valid."""
    model = args.model
    if model is None:
        model = "embedded"
    elif os.path.exists(model):
        model = str(Path(model).resolve())
    settings = {"model": model, "scale": scale, "size": list(size) if size else None, "prior_only": args.prior_only}
    if not args.prior_only:
        settings.update(
            steps=args.steps,
            seed=args.seed,
            strength=args.strength,
            scheduler=args.scheduler,
            dtype=args.dtype,
            tile_size=args.tile_size,
            tile_overlap=args.tile_overlap,
        )
        if args.data_consistency is not None:  # recorded only when given: older manifests stay valid
            settings["data_consistency"] = args.data_consistency
    if args.uncertainty is not None:
        settings["uncertainty"] = args.uncertainty
    return settings


def _claim_out_dir(out_dir: Path, planned: dict[str, str], settings: dict[str, Any], overwrite: bool) -> int | None:
    """Create and lock ``--out-dir`` for this run, and refuse outputs of earlier runs made with other settings.

    Args:
        out_dir: the output folder.
        planned: each input's manifest name -> its output file.
        settings: this run's [`_batch_settings`].
        overwrite: ``--overwrite`` (every output is redone: earlier settings do not matter).

    Returns:
        The lock's file descriptor (kept open for the run).

    Raises:
        CLIError: another run holds the folder, the manifest is not a regular file, or outputs of other settings
            are there and ``overwrite`` is off.
    """
    from ..jobs.batch import MANIFEST_NAME, check_manifest, lock_folder, settings_conflicts, unlock_folder

    manifest = out_dir / MANIFEST_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"--out-dir {out_dir}: cannot create it ({os_reason(err)})") from err
    try:
        check_manifest(manifest)
        lock = lock_folder(out_dir)
    except ValueError as err:
        raise CLIError(one_line(err)) from err
    if not overwrite:
        count, key = settings_conflicts(manifest, planned, settings)
        if count:
            unlock_folder(out_dir, lock)
            what = f"another {_SETTING_FLAGS[key]}" if key in _SETTING_FLAGS else "settings that were not recorded"
            raise CLIError(
                f"--out-dir {out_dir} holds {count} output(s) of an earlier run with {what}; pass --overwrite to "
                "redo them with these settings, or choose another --out-dir"
            )
    return lock


def _batch_output(src: Path, args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None) -> Path:
    """Where a batch writes the output of ``src``: its single-file name, in the mirrored sub-folder of --out-dir."""
    return output_path(src, scale, size, None, args.out_dir / src.parent.relative_to(Path(args.input_dir)))


def _on_main_process_first(work: Any) -> str | None:
    """Run ``work()`` on the main process; every process gets its ``CLIError`` message (``None``: it succeeded)."""
    from accelerate import PartialState

    state = PartialState()
    problem = [None]
    if state.is_main_process:
        try:
            work()
        except CLIError as err:
            problem = [str(err)]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(problem)
    return problem[0]


def _output_complete(dst: Path, out_size: tuple[int, int], geo: bool, map_path: Path | None = None) -> bool:
    """Whether ``dst`` holds a complete result of the expected size (written by an earlier run): it is decoded; with
    ``map_path`` (``--uncertainty``) the map must be there and complete too."""
    if not dst.is_file() or (map_path is not None and not map_path.is_file()):
        return False
    try:
        if geo:
            from ..io.geo import check_raster

            complete = check_raster(dst)[1:] == tuple(out_size)
            return complete and (map_path is None or check_raster(map_path) == (1, *out_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about a truncated TIFF, which is then not complete
            image = read_image_file(dst)
            spread = None if map_path is None else read_image_file(map_path)
        complete = (image.height, image.width) == tuple(out_size)
        return complete and (spread is None or (spread.mode, spread.height, spread.width) == ("F", *out_size))
    except (InputFailed, ValueError, OSError):
        return False


def _batch_device(device: str) -> str:
    """``--device`` of a batch; starts Accelerate's process state (gloo between CPU processes, NCCL between GPUs).

    ``cuda`` means each process's own GPU when several processes run.
    """
    from accelerate import PartialState

    state = PartialState(cpu=device.startswith("cpu"))
    if device == "cuda" and state.num_processes > 1:
        device = f"cuda:{state.local_process_index}"
    return _check_device(device)


def cmd_upscale_dir(args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None) -> int:
    """``neurop-diff upscale --input-dir IN --out-dir OUT``: every image of a folder, resumable, in any number of
    processes (``accelerate launch``); one ``manifest.jsonl`` line per input.

    Outputs are named as single files name them (``OUT/<sub-folder>/<stem>_x<scale><suffix>``). An output that exists
    and decodes at the expected size is kept (a re-run resumes; ``--overwrite`` redoes it). Every file uses the same
    ``--seed``, and on the CPU each process computes with one thread, so the files do not depend on how the inputs
    were split between processes: bit for bit the outputs of one process.
    """
    from ..jobs.batch import find_inputs

    _check_batch_flags(args)
    input_dir, out_dir = Path(args.input_dir), args.out_dir
    sources = find_inputs(input_dir, args.recursive, args.glob, exclude=out_dir)
    if not sources:
        raise CLIError(f"no input files in {input_dir} (glob {args.glob or 'PNG / JPEG / TIFF'})")
    device = _batch_device(args.device)
    import torch

    threads = torch.get_num_threads()
    if device.startswith("cpu"):
        torch.set_num_threads(1)  # CPU kernels split reductions by thread count: one thread, the same bits anywhere
    try:
        return _upscale_dir(args, scale, size, sources, device)
    finally:
        torch.set_num_threads(threads)


def _upscale_dir(
    args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None, sources: list[Path], device: str
) -> int:
    """[`cmd_upscale_dir`] once the inputs and the device are known: the output folder claimed by the main process
    (locked against a second run, its manifest and earlier settings checked), then the model in every process, then
    the files."""
    from accelerate import PartialState

    out_dir = args.out_dir
    settings = _batch_settings(args, scale, size)
    planned = {str(src): str(_batch_output(src, args, scale, size)) for src in sources}
    if args.uncertainty is not None:  # a.png and a.tif: a_x2.png and a_x2.tif, but one map a_x2.uncertainty.tif
        owners: dict[str, str] = {}
        for name, output in planned.items():
            spread = str(uncertainty_path(Path(output)))
            if spread in owners:
                raise CLIError(
                    f"--uncertainty: {owners[spread]} and {name} would both write the map {spread}; rename one of "
                    "them or leave one out with --glob"
                )
            owners[spread] = name
    held: list[int | None] = []  # the main process's lock, held until this run ends
    problem = _on_main_process_first(lambda: held.append(_claim_out_dir(out_dir, planned, settings, args.overwrite)))
    if problem is not None:
        if PartialState().is_main_process:
            raise CLIError(problem)
        return 2
    try:
        return _upscale_dir_locked(args, scale, size, sources, device, settings)
    finally:
        from ..jobs.batch import unlock_folder

        for handle in held:
            unlock_folder(out_dir, handle)


def _upscale_dir_locked(
    args: argparse.Namespace,
    scale: float | None,
    size: tuple[int, int] | None,
    sources: list[Path],
    device: str,
    settings: dict[str, Any],
) -> int:
    """[`_upscale_dir`] once the output folder is locked and checked."""
    import time

    from accelerate import PartialState

    from ..jobs.batch import MANIFEST_NAME, run_batch, stale_temporaries

    manifest = args.out_dir / MANIFEST_NAME
    # in every process, before any file: a bad --model stops them all alike
    pipe = load_job_pipeline(args.model, device)
    pipe.set_progress_bar_config(disable=True)
    _check_model_flags(pipe, args)
    _optimize(pipe, args)
    common = _pipe_kwargs(args)

    inputs = file_identities(sources)

    def one(src: Path) -> dict[str, Any]:
        dst = _batch_output(src, args, scale, size)
        map_path = None if args.uncertainty is None else uncertainty_path(dst)
        record: dict[str, Any] = {
            "input": str(src),
            "output": str(dst),
            "size": None,
            "scale": scale,
            "seconds": 0.0,
            "settings": settings,
            **({} if map_path is None else {"uncertainty": str(map_path)}),
        }
        written = [dst] if map_path is None else [dst, map_path]
        start = time.perf_counter()
        try:
            check_input_file(src)
            for path in written:
                check_not_an_input(src, path, inputs)
            job = prepare_job(src, dst, scale, size, args.max_pixels)
            record["size"] = list(job[3])
            if not args.overwrite and _output_complete(dst, job[3], job[2], map_path):
                return {**record, "status": "ok", "resumed": True}
            for path in written:
                for temporary in stale_temporaries(path):  # left by a run killed while writing
                    temporary.unlink(missing_ok=True)
                check_output_location(path, overwrite=True)
            # this run owns the folder (locked, settings checked): an incomplete output or a map left without its
            # output by a killed run is redone
            redo = args.overwrite or any(os.path.lexists(path) for path in written)
            run_job(pipe, job, args.seed, redo, common)
        except (InputFailed, ValueError, OSError, RuntimeError, MemoryError) as err:
            message = str(err) if isinstance(err, InputFailed) else f"{src}: {one_line(err)}"
            _report(message)
            record.update(status="error", message=message)
        else:
            record["status"] = "ok"
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record

    records = run_batch(sources, one, manifest, [str(s) for s in sources])
    failed = sum(r["status"] != "ok" for r in records)
    resumed = sum(bool(r.get("resumed")) for r in records)
    if PartialState().is_main_process:
        print(
            f"neurop-diff: {len(records)} inputs: {len(records) - failed - resumed} written, {resumed} already "
            f"complete, {failed} failed; manifest {manifest}",
            file=sys.stderr if failed else sys.stdout,
        )
    return 2 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``neurop-diff serve``: the web app (Gradio, extra ``[app]``) on ``--host`` (127.0.0.1) and ``--port`` (7860)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # not imported here: the app first points its cache elsewhere
        raise CLIError("the web app needs Gradio: pip install 'neurop-diff-diffusers[app]'")
    from ..app import MAX_UPLOAD_BYTES, AppConfig, build_app, stop_signals

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {args.port}")
    try:
        config = AppConfig(
            model=args.model,
            device=str(_check_device(args.device)),
            max_input_pixels=args.max_input_pixels,
            max_output_pixels=args.max_output_pixels,
            concurrency=args.concurrency,
            dtype=args.dtype,
            channels_last=args.channels_last,
        )
    except ValueError as err:
        raise CLIError(one_line(err)) from err
    _warn_dtype(args.dtype, config.device)
    from ..runtime.hardware import SlowPrecisionWarning

    with stop_signals():  # Ctrl-C and SIGTERM stop it and remove its temporary folder, whatever was inherited
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SlowPrecisionWarning)  # said once already, before any work
            demo = build_app(config)
        try:
            demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES)
        finally:
            demo.close()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``neurop-diff info``: versions, devices and the embedded model."""
    import json

    import diffusers
    import torch

    from .. import __version__
    from ..runtime.loading import DEFAULT_MODEL_PATH, has_default_model

    print(f"neurop-diff-diffusers {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    cuda = torch.cuda.is_available()
    print(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if cuda else 'cpu only'}")
    print(_auto_line("cpu"))
    if cuda:
        print(_auto_line("cuda"))
    try:
        import rasterio

        print(f"GeoTIFF support: rasterio {rasterio.__version__}")
    except ImportError:
        print("GeoTIFF support: not installed (pip install 'neurop-diff-diffusers[geo]')")
    if has_default_model():
        print(f"default model: {DEFAULT_MODEL_PATH}")
        for component in ("neural_operator", "unet"):
            config = json.loads((DEFAULT_MODEL_PATH / component / "config.json").read_text())
            public = {k: v for k, v in config.items() if not k.startswith("_")}
            print(f"  {component}: {json.dumps(public, sort_keys=True)}")
    else:
        print(f"default model: none shipped in this version ({DEFAULT_MODEL_PATH} is absent); use --model")
    return 0


def _auto_line(device: str) -> str:
    """``info``'s line: what ``--dtype auto`` picks on ``device`` here, and why."""
    from ..runtime.hardware import auto_dtype

    choice = auto_dtype(device)
    return f"--dtype auto on {device}: {choice.dtype}; {choice.reason}"


def cmd_export(args: argparse.Namespace) -> int:
    """``neurop-diff export``: write a pipeline folder, hub-ready (remote-code layout) by default.

    The folder holds no path of the exporting machine (``_name_or_path`` is dropped from its JSON files).
    """
    from ..pipelines.hub import remove_local_paths

    out = Path(args.output_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"{out} is not empty; pass --overwrite to write into it")
    try:
        check_output_location(out / "model_index.json", overwrite=True)
    except InputFailed as err:
        raise CLIError(str(err)) from err
    pipe = load_job_pipeline(args.model, "cpu")
    try:
        pipe.save_pretrained(out, hub_ready=not args.plain)
        remove_local_paths(out)
    except OSError as err:
        raise CLIError(f"{out}: cannot write the pipeline folder ({os_reason(err)})") from err
    print(f"wrote {'plain' if args.plain else 'hub-ready'} pipeline folder {out}")
    return 0


def cmd_evaluate(argv: Sequence[str]) -> int:
    """``neurop-diff evaluate``: the evaluation command (same options as ``training/evaluate.py``)."""
    from .evaluate import main as evaluate_main

    evaluate_main(list(argv), prog="neurop-diff evaluate")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``neurop-diff`` argument parser (``evaluate`` forwards its arguments to the evaluation parser)."""
    from ..defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_TILE_SIZE

    parser = argparse.ArgumentParser(prog="neurop-diff", description="NeurOp-Diff continuous super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale PNG / JPEG / TIFF / GeoTIFF images")
    up.add_argument("inputs", nargs="*", metavar="INPUT")
    how = up.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, help="upscaling factor, any real >= 1 (e.g. 3.7)")
    how.add_argument("--size", help="output size HEIGHTxWIDTH, e.g. 512x768")
    where = up.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, help="output file (one input only)")
    where.add_argument("--out-dir", type=Path, help="output folder (default: beside each input)")
    up.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    up.add_argument(
        "--strength",
        type=float,
        default=None,
        help="fraction of the steps run, from the diffused prior (default: the model's default_strength)",
    )
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--model", default=None, help="pipeline folder, hub id or preset:tiny (default: embedded model)")
    up.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    up.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_CHOICES,
        help="the UNet's precision (default float32; auto: the fastest here, see `neurop-diff info`; bfloat16: CPUs "
        "with bf16 units (avx512_bf16 / amx_bf16) and GPUs; float16: GPUs)",
    )
    up.add_argument("--channels-last", action="store_true", help="channels-last UNet weights (faster kernels)")
    up.add_argument(
        "--scheduler",
        default=None,
        choices=SCHEDULER_CHOICES,
        help="the sampler (default: the model's own, DDIM for the embedded model)",
    )
    up.add_argument("--prior-only", action="store_true", help="the neural-operator prior alone (no diffusion)")
    up.add_argument(
        "--uncertainty",
        type=int,
        default=None,
        metavar="N",
        help="draw N seeded samples (2-64): write their mean as the output and their per-pixel spread as "
        "<output without suffix>.uncertainty.tif (float32, one band, the model's 0..1 scale; for a GeoTIFF a COG "
        "georeferenced like the output, on the --value-range mapped to 0..1); also with --input-dir",
    )
    up.add_argument(
        "--data-consistency",
        type=int,
        default=None,
        metavar="N",
        help="back-project the output onto its input N times (0-100; 0: off, the paper; default: the model's "
        "default_data_consistency_steps, 10 for the embedded model), so that its downsampling agrees with the input",
    )
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    up.add_argument(
        "--tile-size", type=int, default=DEFAULT_TILE_SIZE, help="denoise outputs larger than this in tiles"
    )
    up.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default tile/4, <=64)")
    up.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_OUTPUT_PIXELS,
        help=f"refuse larger outputs (default {DEFAULT_MAX_OUTPUT_PIXELS:,})",
    )
    scene = up.add_argument_group("whole scenes (GeoTIFF; also under `accelerate launch`, windows split)")
    scene.add_argument("--dry-run", action="store_true", help="print the window plan, memory and time; write nothing")
    scene.add_argument("--window", type=int, default=256, help="LR pixels of a window's core, a side (default 256)")
    scene.add_argument("--halo", type=int, default=16, help="LR pixels of context around each window (default 16)")
    scene.add_argument(
        "--value-range",
        default="minmax",
        help="input values to the model's range: minmax (default), LOW,HIGH (e.g. 0,10000) or pLOW,pHIGH (p2,p98)",
    )
    scene.add_argument("--restart", action="store_true", help="discard the windows of a run with other settings")
    scene.add_argument("--workers", type=int, default=None, help="windows at once on the CPU (default: threads)")
    batch = up.add_argument_group("folders (also under `accelerate launch`, split between the processes)")
    batch.add_argument("--input-dir", type=Path, help="every PNG / JPEG / TIFF in this folder (needs --out-dir)")
    batch.add_argument("--recursive", action="store_true", help="with --input-dir: sub-folders too (mirrored)")
    batch.add_argument("--glob", default=None, help="with --input-dir: only files matching this pattern, e.g. '*.tif'")
    up.set_defaults(func=cmd_upscale)

    serve = sub.add_parser("serve", help="the web app (Gradio; pip install 'neurop-diff-diffusers[app]')")
    serve.add_argument("--model", default=None, help="pipeline folder, hub id or preset:NAME (default: embedded)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    serve.add_argument("--concurrency", type=int, default=1, help="requests run at once; others queue (default 1)")
    serve.add_argument("--max-input-pixels", type=int, default=1024 * 1024, help="refuse larger inputs (1024^2)")
    serve.add_argument(
        "--max-output-pixels", type=int, default=2048 * 2048, help="refuse larger outputs (default 2048^2)"
    )
    serve.add_argument(
        "--dtype", default="float32", choices=DTYPE_CHOICES, help="the UNet's precision (float32; auto: the fastest)"
    )
    serve.add_argument("--channels-last", action="store_true", help="channels-last UNet weights (faster kernels)")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("evaluate", help="the paper's tables (see `neurop-diff evaluate --help`)", add_help=False)

    info = sub.add_parser("info", help="versions, device and the embedded model")
    info.set_defaults(func=cmd_info)

    export = sub.add_parser("export", help="write a (hub-ready) pipeline folder")
    export.add_argument("output_dir")
    export.add_argument("--model", default=None, help="pipeline folder, hub id or preset:NAME (default: embedded)")
    export.add_argument("--plain", action="store_true", help="the plain diffusers layout (no remote code)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neurop-diff`` console script; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "evaluate":
            return cmd_evaluate(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (CLIError, ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
        _report(one_line(err))
        return 2
    except KeyboardInterrupt:
        print("neurop-diff: interrupted", file=sys.stderr)
        return 130
