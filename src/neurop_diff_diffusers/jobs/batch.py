"""Batch inference over a folder: the inputs split between processes with Accelerate, resume, ``manifest.jsonl``.

``neurop-diff upscale --input-dir IN --out-dir OUT`` runs one process; the same command under ``accelerate launch``
runs any number (CPU cores, GPUs, machines). Each process takes its own contiguous share of the sorted inputs
(``PartialState().split_between_processes``), so every output is written by exactly one process, once, atomically.
Every process appends one JSON line per input to ``OUT/manifest.jsonl`` as it goes (a run killed midway leaves the
lines of what it did); at the end the main process rewrites the manifest with exactly one line per input, the latest.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text
from .upscale_file import IMAGE_SUFFIXES

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
    ``exclude`` (the output folder, when it lies inside the input folder) are left out.

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
    candidates = folder.rglob(pattern or "*") if recursive else folder.glob(pattern or "*")
    found = []
    for path in candidates:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if pattern is None and path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def stale_temporaries(output: str | os.PathLike) -> list[Path]:
    """Temporary files that an interrupted [`atomic_write`] of ``output`` left beside it (``.<stem>.XXXXXXXX<ext>``).

    Args:
        output: the output file.
    """
    output = Path(output)
    if not output.parent.is_dir():
        return []
    name = re.compile(re.escape(f".{output.stem}.") + r"[a-z0-9_]{8}" + re.escape(output.suffix or ".tmp"))
    return sorted(p for p in output.parent.iterdir() if name.fullmatch(p.name) and p.is_file())


def append_record(manifest: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``manifest`` in a single ``O_APPEND`` write (lines of several processes never mix).

    The manifest is never written through a symbolic link (``O_NOFOLLOW``) nor appended to unless it is a regular
    file: ``ValueError`` otherwise.
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
    finally:
        os.close(handle)


def read_manifest(manifest: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The latest record of each input in ``manifest`` (keyed by ``input``; a damaged line is ignored)."""
    records: dict[str, dict[str, Any]] = {}
    path = Path(manifest)
    if path.is_symlink() or not path.is_file():  # never read through a link
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
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
    """
    latest = read_manifest(manifest)
    records = [latest[name] for name in inputs if name in latest]
    atomic_write_text(manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
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
