"""``neurop-diff upscale --input-dir IN --out-dir OUT``: every image of a folder, resumable, in any number of
processes (``accelerate launch``); the manifest, the lock and the split between processes are
[`~neurop_diff_diffusers.jobs.batch`].

Example:
    neurop-diff upscale --input-dir scenes/ --out-dir out/ --scale 4
    accelerate launch --multi_gpu --num_processes 2 -m neurop_diff_diffusers.cli upscale --input-dir scenes/ \\
        --out-dir out/ --scale 2
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ..jobs.upscale_file import (
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
from .helpers import apply_optimizations, batch_device, check_model_flags, pipe_kwargs, report_error


def check_batch_flags(args: argparse.Namespace) -> None:
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
SETTING_FLAGS = {
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


def batch_settings(args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None) -> dict[str, Any]:
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


def claim_out_dir(out_dir: Path, planned: dict[str, str], settings: dict[str, Any], overwrite: bool) -> int | None:
    """Create and lock ``--out-dir`` for this run, and refuse outputs of earlier runs made with other settings.

    Args:
        out_dir: the output folder.
        planned: each input's manifest name -> its output file.
        settings: this run's [`batch_settings`].
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
            what = f"another {SETTING_FLAGS[key]}" if key in SETTING_FLAGS else "settings that were not recorded"
            raise CLIError(
                f"--out-dir {out_dir} holds {count} output(s) of an earlier run with {what}; pass --overwrite to "
                "redo them with these settings, or choose another --out-dir"
            )
    return lock


def batch_output(src: Path, args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None) -> Path:
    """Where a batch writes the output of ``src``: its single-file name, in the mirrored sub-folder of --out-dir."""
    return output_path(src, scale, size, None, args.out_dir / src.parent.relative_to(Path(args.input_dir)))


def on_main_process_first(work: Any) -> str | None:
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


def output_complete(dst: Path, out_size: tuple[int, int], geo: bool, map_path: Path | None = None) -> bool:
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


def cmd_upscale_dir(args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None) -> int:
    """``neurop-diff upscale --input-dir IN --out-dir OUT``: every image of a folder, resumable, in any number of
    processes (``accelerate launch``); one ``manifest.jsonl`` line per input.

    Outputs are named as single files name them (``OUT/<sub-folder>/<stem>_x<scale><suffix>``). An output that exists
    and decodes at the expected size is kept (a re-run resumes; ``--overwrite`` redoes it). Every file uses the same
    ``--seed``, and on the CPU each process computes with one thread, so the files do not depend on how the inputs
    were split between processes: bit for bit the outputs of one process.
    """
    from ..jobs.batch import find_inputs

    check_batch_flags(args)
    input_dir, out_dir = Path(args.input_dir), args.out_dir
    sources = find_inputs(input_dir, args.recursive, args.glob, exclude=out_dir)
    if not sources:
        raise CLIError(f"no input files in {input_dir} (glob {args.glob or 'PNG / JPEG / TIFF'})")
    device = batch_device(args.device)
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
    settings = batch_settings(args, scale, size)
    planned = {str(src): str(batch_output(src, args, scale, size)) for src in sources}
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
    problem = on_main_process_first(lambda: held.append(claim_out_dir(out_dir, planned, settings, args.overwrite)))
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
    check_model_flags(pipe, args)
    apply_optimizations(pipe, args)
    common = pipe_kwargs(args)

    inputs = file_identities(sources)

    def one(src: Path) -> dict[str, Any]:
        dst = batch_output(src, args, scale, size)
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
            if not args.overwrite and output_complete(dst, job[3], job[2], map_path):
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
            report_error(message)
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
