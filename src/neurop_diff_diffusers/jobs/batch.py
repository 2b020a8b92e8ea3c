"""Batch inference over a folder: the inputs split between processes with Accelerate, resume, ``manifest.jsonl``.

``neurop-diff upscale --input-dir IN --out-dir OUT`` runs one process; the same command under ``accelerate launch``
runs any number (CPU cores, GPUs, machines). Each process takes its own contiguous share of the sorted inputs
(``PartialState().split_between_processes``), so every output is written by exactly one process, once, atomically.
Every process appends one JSON line per input to ``OUT/manifest.jsonl`` as it goes (a run killed midway leaves the
lines of what it did); at the end the main process rewrites the manifest with exactly one line per input, the latest.
Each file is planned and run as a single file is ([`~neurop_diff_diffusers.jobs.upscale_file.plan_file`], with the
batch's [`~neurop_diff_diffusers.jobs.upscale_file.JobOptions`]); [`FolderJob`] holds what is the same for every file,
[`upscale_one`] does one file and returns its manifest record.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.JPG", "notes.txt", ".hidden.png"):
    ...     _ = (folder / name).write_bytes(b"x")
    >>> [p.name for p in find_inputs(folder)]
    ['a.JPG', 'b.png']
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..file_safety import loads_bounded, make_dirs_inside, printable, read_bytes_no_follow
from ..utils import atomic_write_text, stale_temporaries
from .stopping import check_stop_flag, raise_if_stopped
from .upscale_file import (
    IMAGE_SUFFIXES,
    CLIError,
    InputFailed,
    JobOptions,
    file_identities,
    one_line,
    os_reason,
    output_path,
    plan_file,
    read_image_file,
    run_job,
    uncertainty_path,
)

#: Name of the per-input record file written in the output folder.
MANIFEST_NAME = "manifest.jsonl"
#: Name of the lock file that keeps a second run out of an output folder while one runs (hidden: never an input).
LOCK_NAME = ".neurop-diff.lock"


def check_glob(pattern: str | None) -> str | None:
    """Refuse a ``--glob`` that leaves the input folder: an absolute pattern or one with a ``..`` part.

    Args:
        pattern: the pattern (``None``: every image file).

    Returns:
        The pattern itself.

    Raises:
        ValueError: naming ``--glob``.

    Example:
        >>> check_glob("sub/*.tif")
        'sub/*.tif'
    """
    if pattern is None:
        return None
    parts = re.split(r"[\\/]+", pattern)
    if not pattern or os.path.isabs(pattern) or pattern.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise ValueError(
            f"--glob must be a pattern relative to --input-dir (no leading '/', no drive, no '..'), got {pattern!r}"
        )
    return pattern


def check_manifest(manifest: str | os.PathLike) -> None:
    """Refuse a ``manifest.jsonl`` that is not a regular file (a symbolic link, a folder, a FIFO, ...): the run
    would append to whatever it points at.

    Args:
        manifest: the manifest file (it need not exist).

    Raises:
        ValueError: naming the file and what it is.
    """
    try:
        mode = os.lstat(manifest).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a file"
        raise ValueError(
            f"{manifest} is {kind}, not a regular file: remove it or choose another --out-dir (the manifest is "
            "never written through a link)"
        )


def lock_folder(folder: str | os.PathLike) -> int | None:
    """Take the exclusive lock of an output folder (``LOCK_NAME`` in it), without waiting; keep the returned file
    descriptor open for the whole run (the lock goes with it, also when the process is killed), then give it to
    [`unlock_folder`].

    Args:
        folder: the output folder (it exists).

    Returns:
        The lock file's descriptor (``None`` where the platform has no ``fcntl``: no lock).

    Raises:
        ValueError: another run holds the lock, or the lock file is not a regular file.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    path = Path(folder) / LOCK_NAME
    for _ in range(5):  # the file may be removed by the run that held it between our open and our lock: retry
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as err:
            raise ValueError(f"{path}: cannot open the lock file of --out-dir ({err.strerror or err})") from None
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise ValueError(f"{path} is not a regular file: remove it")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise ValueError(
                f"another neurop-diff run is writing in --out-dir {folder} (it holds {path}); wait for it to end or "
                "choose another --out-dir"
            ) from None
        except BaseException:
            os.close(handle)
            raise
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        held = os.fstat(handle)
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            return handle
        os.close(handle)
    raise ValueError(f"{path}: the lock file keeps changing; is another run starting? Try again")


def unlock_folder(folder: str | os.PathLike, handle: int | None) -> None:
    """Release the lock taken by [`lock_folder`] and remove the lock file (while still holding it, so that a run
    waiting on the old file notices and takes a new one).

    Args:
        folder: the output folder.
        handle: what [`lock_folder`] returned.
    """
    if handle is None:
        return
    try:
        Path(folder, LOCK_NAME).unlink(missing_ok=True)
    finally:
        os.close(handle)


def settings_conflicts(
    manifest: str | os.PathLike, planned: dict[str, str], settings: dict[str, Any]
) -> tuple[int, str | None]:
    """The outputs that this run would write and that an earlier run made with other ``settings`` (recorded in the
    manifest) and which still exist: they must not be kept as complete.

    Args:
        manifest: the manifest file.
        planned: this run's ``input`` name -> its output file.
        settings: this run's settings (the ``settings`` of each record).

    Returns:
        ``(count, key)``: how many such outputs, and the first setting that differs (``None`` if the records hold no
        settings, e.g. written by an older version).
    """
    latest = read_manifest(manifest)
    count, key = 0, None
    for name, output in planned.items():
        record = latest.get(name)
        if record is None or record.get("status") != "ok" or record.get("settings") == settings:
            continue
        if record.get("output") != output or not os.path.lexists(output):
            continue
        count += 1
        old = record.get("settings")
        if key is None and isinstance(old, dict):  # a key of either side: one may be recorded only when set
            key = next((k for k in [*settings, *old] if old.get(k) != settings.get(k)), None) or next(iter(old), None)
    return count, key


def find_inputs(
    input_dir: str | os.PathLike,
    recursive: bool = False,
    pattern: str | None = None,
    exclude: str | os.PathLike | None = None,
) -> list[Path]:
    """The files of ``input_dir`` to upscale, sorted (the same list, in the same order, in every process).

    Hidden files (a name starting with ``.``, e.g. the temporary files of an interrupted write) and everything under
    ``exclude`` (the output folder, when it lies inside the input folder) are left out, and so is a file reached
    through a symbolic link out of ``input_dir`` (nothing outside the declared input is read), with one warning that
    counts them.

    Args:
        input_dir: the folder.
        recursive: search sub-folders too.
        pattern: a glob pattern for the file names (e.g. ``"*.tif"``); ``None``: every PNG / JPEG / TIFF file.
        exclude: a folder whose files are never inputs.

    Raises:
        ValueError: if ``input_dir`` is not a folder, or ``pattern`` is absolute or has a ``..`` part.
    """
    check_glob(pattern)
    folder = Path(input_dir)
    if not folder.is_dir():
        raise ValueError(f"--input-dir {folder} is not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    root = folder.resolve()
    candidates = folder.rglob(pattern or "*") if recursive else folder.glob(pattern or "*")
    found, outside = [], []
    for path in candidates:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if pattern is None and path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        if not path.resolve().is_relative_to(root):
            outside.append(relative.as_posix())
            continue
        found.append(path)
    if outside:
        warnings.warn(
            f"--input-dir {printable(folder)}: {len(outside)} file(s) reached through a symbolic link out of the "
            f"folder are not inputs (not followed), e.g. {printable(min(outside))}",
            stacklevel=2,
        )
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def append_record(manifest: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``manifest`` in a single ``O_APPEND`` write (lines of several processes never mix).

    The manifest is never written through a symbolic link (``O_NOFOLLOW``) nor appended to unless it is a regular
    file: ``ValueError`` otherwise, and also when the write fails (e.g. a full disk), naming the file and the reason.
    """
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        handle = os.open(manifest, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        check_manifest(manifest)
        raise ValueError(f"{manifest}: cannot append to it ({err.strerror or err})") from None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise ValueError(f"{manifest} is not a regular file: remove it or choose another --out-dir")
        os.write(handle, line)
    except OSError as err:  # e.g. a full disk: one line, the run stops (the outputs written so far are kept)
        raise ValueError(f"{manifest}: cannot append to it ({err.strerror or err})") from None
    finally:
        os.close(handle)


#: Largest manifest read back (a line is a few hundred bytes: some 100,000 inputs).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def read_manifest(manifest: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The latest record of each input in ``manifest`` (keyed by ``input``; a damaged line is ignored).

    The file is hostile input: never read through a link, refused from its size over [`MAX_MANIFEST_BYTES`]
    (``ValueError``), and a line nested deeper than a record can be is ignored before it is parsed.
    """
    records: dict[str, dict[str, Any]] = {}
    path = Path(manifest)
    if path.is_symlink() or not path.is_file():  # never read through a link
        return records
    text = read_bytes_no_follow(path, MAX_MANIFEST_BYTES, "manifest").decode("utf-8", errors="replace")
    for line in text.splitlines():
        try:
            record = loads_bounded(line, "manifest line")
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("input"), str):
            records[record["input"]] = record
    return records


def compact_manifest(manifest: str | os.PathLike, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Rewrite ``manifest`` (atomically) with exactly one line per input of ``inputs``, the latest, in that order.

    Args:
        manifest: the manifest file.
        inputs: the inputs of this run, in order.

    Returns:
        The records written.

    Raises:
        ValueError: the manifest cannot be rewritten (e.g. a full disk), naming it and the reason.
    """
    latest = read_manifest(manifest)
    records = [latest[name] for name in inputs if name in latest]
    try:
        atomic_write_text(manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    except OSError as err:  # the appended lines stay: a re-run reads them
        raise ValueError(f"{manifest}: cannot rewrite it ({err.strerror or err})") from None
    return records


def run_batch(
    items: Sequence[Any],
    process: Callable[[Any], dict[str, Any]],
    manifest: str | os.PathLike,
    names: Sequence[str],
    description: str = "upscaling",
) -> list[dict[str, Any]]:
    """Run ``process`` on this process's share of ``items``, record each result, and gather all records.

    Under ``accelerate launch`` each process takes a contiguous share of ``items``; without it the one process takes
    them all. A progress bar (files) is shown on the main process.

    Args:
        items: the work, identical (same order) in every process.
        process: called once per item of this process's share; returns the item's manifest record (a JSON-able
            dict with an ``input`` key), which is appended to ``manifest`` at once.
        manifest: the ``manifest.jsonl`` file.
        names: the ``input`` names of all items, in order: the manifest is rewritten with one line per name.
        description: the progress bar's label.

    Returns:
        The records of this run, of every process, in the order of ``items`` (on every process).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState()
    records = []
    with state.split_between_processes(list(items)) as share:
        for item in tqdm(share, desc=description, unit="file", disable=not state.is_main_process):
            record = dict(process(item), process=state.process_index)
            append_record(manifest, record)
            records.append(record)
    state.wait_for_everyone()
    everything = gather_object(records) if state.num_processes > 1 else records
    if state.is_main_process:
        compact_manifest(manifest, names)
    state.wait_for_everyone()
    order = {name: i for i, name in enumerate(names)}
    return sorted(everything, key=lambda r: order.get(r["input"], len(order)))


#: The settings of a batch (the ``settings`` of each manifest record) -> the ``upscale`` flags that set them.
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
    "window": "--window",
    "halo": "--halo",
    "value_range": "--value-range",
}


def batch_settings(
    model: str | None,
    scale: float | None,
    size: tuple[int, int] | None,
    options: JobOptions,
    dtype: str,
    scheduler: str | None,
) -> dict[str, Any]:
    """What a batch's outputs depend on, recorded in each manifest line: a re-run with other settings must not keep
    them as complete.

    A local ``--model`` is recorded as its absolute path; with ``--prior-only`` the sampler's settings do not matter
    and are not recorded. ``--uncertainty N`` and ``--data-consistency N`` are recorded only when given, and a
    GeoTIFF's ``--window``, ``--halo``, ``--value-range`` and ``--clip`` only when not the defaults, so that the
    manifests of earlier runs (made with the defaults) stay valid. ``--workers`` and ``--restart`` change how, not
    what, a GeoTIFF is computed: not recorded.

    Args:
        model: ``--model`` (``None``: the embedded model).
        scale: ``--scale`` (or ``None`` with ``size``).
        size: ``--size`` (or ``None``).
        options: the per-file [`JobOptions`].
        dtype: ``--dtype``.
        scheduler: ``--scheduler`` (``None``: the model's own).

    Example:
        >>> settings = batch_settings("preset:tiny", 2.0, None, JobOptions(steps=2, window=64), "float32", None)
        >>> settings["steps"], settings["window"], "halo" in settings
        (2, 64, False)
    """
    if model is None:
        model = "embedded"
    elif os.path.exists(model):
        model = str(Path(model).resolve())
    settings = {"model": model, "scale": scale, "size": list(size) if size else None, "prior_only": options.prior_only}
    if not options.prior_only:
        settings.update(
            steps=options.steps,
            seed=options.seed,
            strength=options.strength,
            scheduler=scheduler,
            dtype=dtype,
            tile_size=options.tile_size,
            tile_overlap=options.tile_overlap,
        )
        if options.data_consistency_steps is not None:  # recorded only when given: older manifests stay valid
            settings["data_consistency"] = options.data_consistency_steps
    if options.num_samples is not None:
        settings["uncertainty"] = options.num_samples
    defaults = JobOptions()
    for name in ("window", "halo", "value_range", "clip"):  # a GeoTIFF's: recorded when not the default
        if getattr(options, name) != getattr(defaults, name):
            settings[name] = getattr(options, name)
    return settings


@dataclass(frozen=True)
class FolderJob:
    """What every file of a batch shares.

    Args:
        input_dir: ``--input-dir``.
        out_dir: ``--out-dir`` (the outputs, in the input's sub-folders, and ``manifest.jsonl``).
        scale: ``--scale`` (or ``None`` with ``size``).
        size: ``--size`` (or ``None``).
        options: the per-file [`JobOptions`].
        overwrite: ``--overwrite``: redo outputs that are complete.
        settings: the [`batch_settings`] recorded in each manifest line.

    Example:
        >>> from pathlib import Path
        >>> folder = FolderJob(Path("in"), Path("out"), 2.0, None, JobOptions())
        >>> folder.output(Path("in/sub/a.png")).as_posix(), folder.manifest.as_posix()
        ('out/sub/a_x2.png', 'out/manifest.jsonl')
    """

    input_dir: Path
    out_dir: Path
    scale: float | None
    size: tuple[int, int] | None
    options: JobOptions
    overwrite: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest(self) -> Path:
        """The ``manifest.jsonl`` file."""
        return self.out_dir / MANIFEST_NAME

    def output(self, src: Path) -> Path:
        """Where a batch writes the output of ``src``: its single-file name, in the mirrored sub-folder of
        ``out_dir``."""
        return output_path(src, self.scale, self.size, None, self.out_dir / src.parent.relative_to(self.input_dir))

    def planned(self, sources: Sequence[Path]) -> dict[str, str]:
        """Each input's manifest name -> its output file; two inputs that would write one file are refused: one
        output (``a.tif`` and a TIFF named ``a.png``: both ``a_x2.tif``), or with ``--uncertainty`` one map
        (``a.png`` and ``a.tif``: ``a_x2.png`` and ``a_x2.tif``, one map ``a_x2.uncertainty.tif``). Otherwise the
        second would replace the first's output and both would be recorded as done.

        Raises:
            CLIError: naming both inputs and the file.
        """
        planned = {str(src): str(self.output(src)) for src in sources}
        owners: dict[str, str] = {}
        for name, output in planned.items():
            written = [(output, "the output")]
            if self.options.num_samples is not None:
                written.append((str(uncertainty_path(Path(output))), "the map"))
            for path, what in written:
                if path in owners:
                    flag = "--uncertainty: " if what == "the map" else ""
                    raise CLIError(
                        f"{flag}{owners[path]} and {name} would both write {what} {path}; rename one of them or leave "
                        "one out with --glob"
                    )
                owners[path] = name
        return planned


def claim_out_dir(out_dir: Path, planned: dict[str, str], settings: dict[str, Any], overwrite: bool) -> int | None:
    """Create and lock ``--out-dir`` for this run, and refuse outputs of earlier runs made with other settings.

    Args:
        out_dir: the output folder.
        planned: each input's manifest name -> its output file.
        settings: this run's [`batch_settings`].
        overwrite: ``--overwrite`` (every output is redone: earlier settings do not matter).

    Returns:
        The lock's file descriptor (kept open for the run; give it to [`unlock_folder`]).

    Raises:
        CLIError: another run holds the folder, the manifest is not a regular file, or outputs of other settings
            are there and ``overwrite`` is off.
    """
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


def on_main_process_first(work: Callable[[], Any]) -> str | None:
    """Run ``work()`` on the main process; every process gets its ``CLIError`` message (``None``: it succeeded).

    Args:
        work: what the main process does alone (e.g. claim the output folder).
    """
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
    ``map_path`` (``--uncertainty``) the map must be there and complete too.

    Args:
        dst: the output file.
        out_size: its expected ``(height, width)``.
        geo: whether it is a GeoTIFF.
        map_path: the uncertainty map expected beside it, if any.
    """
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


def upscale_one(
    pipe: Any, src: Path, folder: FolderJob, inputs: dict[tuple[int, int], Path], stop: Any = None
) -> dict[str, Any]:
    """One file of a batch, planned as a single file is ([`plan_file`], with the batch's options), kept when a
    complete output of an earlier run is there (unless ``overwrite``), else run; its manifest record.

    This run owns the folder (locked, settings checked): an incomplete output, or a map left without its output by a
    killed run, is redone, and the temporary files of a killed write are removed. The input's sub-folders below the
    output folder (``--recursive``) are real folders: a link among them is refused (that input fails with one line),
    never followed out of the folder.

    Args:
        pipe: the loaded pipeline.
        src: the input file.
        folder: the [`FolderJob`].
        inputs: every input's [`file_identities`] (no output may be one of them).
        stop: a stop flag ([`run_job`]'s): once set, [`~neurop_diff_diffusers.jobs.stopping.RunStopped`] ends the
            batch (no record for this file: the next run redoes it, from a GeoTIFF's finished windows).

    Returns:
        The record: ``input``, ``output``, ``size``, ``scale``, ``seconds``, ``settings``, ``status`` (``ok`` or
        ``error`` with its one-line ``message``), ``uncertainty`` (the map) and ``resumed`` (a kept output).
    """
    dst = folder.output(src)
    options = folder.options
    record: dict[str, Any] = {
        "input": str(src),
        "output": str(dst),
        "size": None,
        "scale": folder.scale,
        "seconds": 0.0,
        "settings": folder.settings,
        **({} if options.num_samples is None else {"uncertainty": str(uncertainty_path(dst))}),
    }
    start = time.perf_counter()
    try:
        # the input's sub-folders below --out-dir: real folders, never links out of it (checked, then made to write)
        make_dirs_inside(dst.parent, folder.out_dir, "output folder", create=False)
        job = plan_file(src, dst, folder.scale, folder.size, options, overwrite=True, inputs=inputs)
        record["size"] = list(job.out_size)
        if not folder.overwrite and output_complete(dst, job.out_size, job.geo, job.uncertainty):
            return {**record, "status": "ok", "resumed": True}
        for path in job.outputs:
            for temporary in stale_temporaries(path):  # left by a run killed while writing
                temporary.unlink(missing_ok=True)
        redo = folder.overwrite or any(os.path.lexists(path) for path in job.outputs)
        make_dirs_inside(dst.parent, folder.out_dir, "output folder")
        run_job(pipe, job, redo, stop=stop)
    except (InputFailed, ValueError, OSError, RuntimeError, MemoryError) as err:
        message = str(err) if isinstance(err, InputFailed) else f"{src}: {one_line(err)}"
        record.update(status="error", message=message)
    else:
        record["status"] = "ok"
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def upscale_folder(
    pipe: Any,
    sources: Sequence[Path],
    folder: FolderJob,
    report: Callable[[str], None] | None = None,
    stop: Any = None,
) -> list[dict[str, Any]]:
    """Every file of a batch ([`upscale_one`]), this process's share under ``accelerate launch`` ([`run_batch`]),
    each recorded in the manifest as it is done.

    Args:
        pipe: the loaded pipeline (in every process).
        sources: every input, sorted ([`find_inputs`]).
        folder: the [`FolderJob`] (its folder claimed by [`claim_out_dir`]).
        report: called with the one-line message of each input that failed.
        stop: a stop flag (``is_set()``), checked before each file and after every denoising step: once set, the
            batch ends with [`~neurop_diff_diffusers.jobs.stopping.RunStopped`]; the files done are in the manifest,
            the one in flight is redone by the next run.

    Returns:
        The records of every process, in the order of ``sources``.
    """
    inputs = file_identities(sources)
    check_stop_flag(stop)

    def one(src: Path) -> dict[str, Any]:
        raise_if_stopped(stop)
        record = upscale_one(pipe, src, folder, inputs, stop)
        if report is not None and record["status"] != "ok":
            report(record["message"])
        return record

    return run_batch(sources, one, folder.manifest, [str(s) for s in sources])
