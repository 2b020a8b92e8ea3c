"""The journal and the fingerprint: what lets a run resume from the windows of an earlier one, and only of one with
the same settings.

Each finished window's output is saved (atomically) in a work folder beside the output,
``.<name>.neurop-diff-scene/``, with ``journal.json`` recording the settings (model fingerprint, output size, steps,
sampler, dtype, seed, strength, prior only, samples, window, halo, value range, clip, input file and a hash of its
bytes). A journal of other settings is never mixed in (``ValueError`` naming the differences; ``restart=True``
discards it).

The resume state is read as hostile input:

- the work folder is used only if this tool made it (its marker, [`~neurop_diff_diffusers.file_safety.
  claim_work_folder`]), never through a link, and a run holds it locked ([`hold_work_folder`]): a second run of the
  same output is refused with one line; under ``accelerate launch`` the main process holds the lock and names its
  launch in the folder, and every other process checks that name before it writes a window;
- the journal is read within a size and depth budget and checked against its schema before use;
- a window file is opened without following a link and checked from its ``.npy`` header (float32, the window's
  shape, C order, the size those imply) before a byte of data is read, then its values (finite: NaN or an infinity
  is never blended into an output); a damaged one found when a run starts is
  discarded (one warning) and computed again, one found while the output is assembled is refused naming the file
  and ``--restart``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...file_safety import WORK_MARKER, claim_work_folder, load_json_file, printable, read_text_no_follow
from ...io.paths import uncertainty_path
from ...utils import atomic_write, atomic_write_json, atomic_write_text, stale_temporaries
from .plan import ScenePlan, SceneWindow
from .statistics import ValueRange
from .window import is_neurop_pipeline

if TYPE_CHECKING:
    from .job import SceneJob

#: Version of the journal format; a journal of another version is never mixed in.
JOURNAL_VERSION = 2
#: Largest ``journal.json`` read (a journal is a few KB: the settings and a count).
MAX_JOURNAL_BYTES = 1024 * 1024
#: Deepest nesting of a journal read (the sampler's config is the deepest entry: 3 levels).
MAX_JOURNAL_DEPTH = 16
#: Most windows a journal may count (a 2^20-window plan is far beyond any scene; the plan decides the real count).
MAX_JOURNAL_WINDOWS = 2**24
#: The names of window files (``w000042.npy``).
_WINDOW_NAME = re.compile(r"w(\d{6})\.npy")
_HASH_CHUNK = 4 * 1024 * 1024
_SUFFIX = ".neurop-diff-scene"


def work_folder(dst_path: str | os.PathLike) -> Path:
    """The folder beside the output holding the journal and the finished windows: ``.<name>.neurop-diff-scene``."""
    dst = Path(dst_path)
    return dst.parent / f".{dst.name}{_SUFFIX}"


def _public_config(config: Any) -> str:
    """A config as canonical JSON without diffusers' private entries (e.g. ``_use_default_values``, whose order
    changes from one process to the next)."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


def model_fingerprint(pipe: Any) -> str:
    """A SHA-256 of the pipeline's weights and configuration (what makes two runs' windows interchangeable)."""
    digest = hashlib.sha256()
    if not is_neurop_pipeline(pipe):
        digest.update(f"{type(pipe).__module__}.{getattr(pipe, '__qualname__', type(pipe).__qualname__)}".encode())
        return digest.hexdigest()
    for name in ("unet", "neural_operator"):
        module = getattr(pipe, name)
        if module is None:
            digest.update(f"{name}:none".encode())
            continue
        digest.update(_public_config(module.config).encode())
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tensor.dtype).encode())
            # flattened first: a channels-last (N, C, 1, 1) weight counts as contiguous with a stride of C on its
            # last axis, which no byte view accepts; the bytes are those of the logical order, any memory format
            digest.update(tensor.detach().cpu().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(_public_config(pipe.config).encode())
    return digest.hexdigest()


def input_fingerprint(path: str | os.PathLike) -> str:
    """A fast hash of the input's bytes (``xxh3_128`` where ``xxhash`` is installed, else BLAKE2b), prefixed with
    the algorithm's name: an input rewritten with the same size and modification time is another input.

    Args:
        path (`str | os.PathLike`): the input file.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.tif"
        >>> _ = f.write_bytes(b"pixels")
        >>> input_fingerprint(f).split(":")[0] in ("xxh3_128", "blake2b")
        True
    """
    try:
        import xxhash

        name, digest = "xxh3_128", xxhash.xxh3_128()
    except ImportError:
        name, digest = "blake2b", hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return f"{name}:{digest.hexdigest()}"


def scene_settings(
    pipe: Any,
    src_path: Path,
    plan: ScenePlan,
    seed: int,
    value_range: ValueRange,
    model_bands: list[int],
    pipe_kwargs: dict[str, Any],
    clip: bool = False,
) -> dict[str, Any]:
    """Everything a window's output depends on: two runs mix windows only when these are equal.

    ``num_samples`` (the uncertainty map's samples) is its own entry, present only when set: a run with other
    samples, or with / without a map, is refused by name. The input is known by its path, size and a hash of its
    bytes ([`input_fingerprint`]): an input rewritten since the windows were computed is refused by name (``input``).
    """
    size = src_path.stat().st_size
    pipeline = {k: pipe_kwargs[k] for k in sorted(pipe_kwargs) if k != "num_samples"}
    samples = {} if pipe_kwargs.get("num_samples") is None else {"num_samples": pipe_kwargs["num_samples"]}
    scheduler = getattr(pipe, "scheduler", None)
    unet = getattr(pipe, "unet", None)
    return {
        "version": JOURNAL_VERSION,
        "input": {"path": str(src_path.resolve()), "bytes": size, "content": input_fingerprint(src_path)},
        "model": model_fingerprint(pipe),
        "sampler": None
        if scheduler is None
        else {
            "class": type(scheduler).__name__,
            "config": json.loads(_public_config(scheduler.config)),
        },
        "dtype": str(getattr(unet, "dtype", None)),
        "size": list(plan.size),
        "out_size": list(plan.out_size),
        "window": plan.window,
        "halo": plan.halo,
        "seed": seed,
        "value_range": str(value_range),
        "clip": clip,
        "model_bands": model_bands,
        "pipeline": pipeline,
        **samples,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The entries of ``new`` that ``old`` has otherwise (an old journal's own entries are not named: they come
    from a file that could say anything)."""
    known = set(new) | (set(old) & {"num_samples"})  # the one entry present only in some runs' settings
    names = [k for k in sorted(known) if old.get(k) != new.get(k)]
    if set(old) - known:
        names.append("entries of another version")
    return names


def read_journal(path: Path) -> dict[str, Any] | None:
    """The journal at ``path`` checked against its schema, or ``None`` when there is none.

    Within budgets ([`MAX_JOURNAL_BYTES`], [`MAX_JOURNAL_DEPTH`]), never through a link; an object with exactly
    ``settings`` (an object with text keys) and ``windows`` (an integer from 1 to [`MAX_JOURNAL_WINDOWS`]).

    Args:
        path (`Path`): the ``journal.json`` file.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    if not os.path.lexists(path):
        return None
    data = load_json_file(path, "journal", MAX_JOURNAL_BYTES, MAX_JOURNAL_DEPTH)
    name = f"journal `{printable(path)}`"
    if not isinstance(data, dict) or set(data) != {"settings", "windows"}:
        raise ValueError(f"{name} is not a journal of this tool (an object with settings and windows)")
    if not isinstance(data["settings"], dict) or not all(isinstance(k, str) for k in data["settings"]):
        raise ValueError(f"{name}: its settings are not an object")
    windows = data["windows"]
    if type(windows) is not int or not 1 <= windows <= MAX_JOURNAL_WINDOWS:
        raise ValueError(f"{name}: its window count is not an integer from 1 to {MAX_JOURNAL_WINDOWS}")
    return data


def window_file(folder: Path, index: int) -> Path:
    return folder / f"w{index:06d}.npy"


def save_window(folder: Path, index: int, array: np.ndarray) -> None:
    def write(temp: str) -> None:
        with open(temp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(window_file(folder, index), write, what="window file")


@contextlib.contextmanager
def _open_window(path: Path, shape: tuple[int, ...]) -> Iterator[Any]:
    """``path`` opened without following a link, positioned at its data once its ``.npy`` header says float32 of
    ``shape`` in C order and the file's size is what that implies (nothing else read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        if os.path.islink(path):
            raise ValueError("a symbolic link (not followed)") from None
        raise ValueError(f"cannot open it ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version}")
        except (ValueError, SyntaxError, EOFError) as err:
            raise ValueError(f"not a saved window: {printable(str(err))[:120]}") from None
        found, fortran, dtype = header
        if dtype != np.dtype(np.float32) or fortran or tuple(found) != shape:
            described = "Fortran" if fortran else "C"
            raise ValueError(f"holds {dtype} {tuple(found)} in {described} order, not float32 {shape} in C order")
        expected = f.tell() + int(np.prod(shape)) * 4
        if info.st_size != expected:
            raise ValueError(f"{info.st_size} bytes, not the {expected} its header implies")
        yield f


def _read_window(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The window saved at ``path``, checked from its header and size before it is read ([`_open_window`]), then
    its values: a window the model computed is finite (its output is refused otherwise), so a NaN or an infinity
    means the file was damaged or written by something else. ``ValueError`` with the reason otherwise."""
    with _open_window(path, shape) as f:
        array = np.empty(shape, dtype=np.float32)
        if f.readinto(memoryview(array).cast("B")) != array.nbytes:
            raise ValueError("shorter than its header says")
    if not np.isfinite(array).all():
        raise ValueError("holds NaN or infinite values")
    return array


def check_window_file(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why the window file at ``path`` cannot hold a window of ``shape`` (from its header and size, then its values:
    all finite), or ``None``."""
    try:
        _read_window(path, shape)
    except ValueError as err:
        return str(err)
    return None


def load_window(folder: Path, window: SceneWindow, planes: int) -> np.ndarray:
    """A saved window: ``planes`` = the bands, plus one for the uncertainty map when the run draws samples.

    Raises:
        ValueError: naming the file and ``--restart`` when it is not such a window (checked before reading it).
    """
    path = window_file(folder, window.index)
    shape = (planes, *window.out_shape)
    try:
        return _read_window(path, shape)
    except ValueError as err:
        raise ValueError(
            f"window file `{printable(path)}` is damaged ({err}); rerun with restart=True (CLI: --restart)"
        ) from None


def done_windows(folder: Path, windows: list[SceneWindow]) -> set[int]:
    """Indices of the windows whose output is saved in ``folder`` (regular files only, no link followed)."""
    done = set()
    for w in windows:
        try:
            if stat.S_ISREG(os.lstat(window_file(folder, w.index)).st_mode):
                done.add(w.index)
        except OSError:
            pass
    return done


def discard_damaged_windows(job: SceneJob) -> int:
    """Remove the window files of ``job.folder`` that cannot be one of its windows (from their headers: links,
    other types or shapes, truncated, random bytes; then from their values: NaN or infinite); they are computed
    again. One warning names the first.

    Returns:
        `int`: how many were discarded.
    """
    windows = job.plan.windows()
    damaged = []
    for entry in os.scandir(job.folder):
        match = _WINDOW_NAME.fullmatch(entry.name)
        if match is None:
            continue
        index = int(match.group(1))
        if index >= len(windows):
            reason = f"window {index} is not in this plan of {len(windows)}"
        else:
            reason = check_window_file(Path(entry.path), (job.planes, *windows[index].out_shape))
        if reason is not None:
            damaged.append((entry.name, reason))
            os.unlink(entry.path)  # a link itself, never its target
    if damaged:
        name, reason = sorted(damaged)[0]
        warnings.warn(
            f"{len(damaged)} saved window file(s) of `{printable(job.dst_path)}` were damaged and are computed "
            f"again ({printable(name)}: {reason})",
            UserWarning,
            stacklevel=3,
        )
    return len(damaged)


#: The file of a held work folder that names the distributed launch whose main process holds it ([`launch_id`]).
HOLDER = ".neurop-diff-holder"


def launch_id() -> str | None:
    """What every process of one ``accelerate launch`` (torchrun) shares and no other launch running at the same
    time does: the rendezvous id, the main process's address and port, the process count; ``None`` for one
    process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    keys = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")
    return " ".join(f"{key}={os.environ.get(key, '')}" for key in keys)


def _check_holder(job: SceneJob) -> None:
    """A process other than the main one of a distributed run: refused unless its launch holds the work folder."""
    try:
        holder = read_text_no_follow(job.folder / HOLDER, 4096, "work folder holder")
    except (OSError, ValueError):  # missing, a link, not a file: no launch of ours holds it
        holder = None
    if holder is None or holder != launch_id():
        raise ValueError(
            f"another run holds the work folder `{printable(job.folder)}` of `{printable(job.dst_path)}`: this "
            f"process (rank {printable(os.environ.get('RANK', '?'))}) is not of the launch that holds it; wait for it "
            "to end"
        )


def _clear_work_folder(folder: Path) -> None:
    """Remove what a work folder holds but its marker and holder (the folder itself stays: a run holds it locked)."""
    for entry in os.scandir(folder):
        if entry.name in (WORK_MARKER, HOLDER):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def open_journal(job: SceneJob, settings: dict[str, Any], restart: bool, is_main: bool, barrier: Callable) -> None:
    """Validate (all processes) and create (main process) the journal; a journal of other settings, or a damaged
    one, is refused naming ``--restart``; damaged window files are discarded ([`discard_damaged_windows`]). After the
    first ``barrier`` (the main process holds the folder by then), another process goes on only if its launch is the
    one that holds the folder ([`HOLDER`])."""
    claim_work_folder(job.folder, "", create=False)  # a link, a file, a folder of someone else: refused
    journal = job.folder / "journal.json"
    try:
        old = read_journal(journal)
    except ValueError as err:
        if not restart:
            raise ValueError(f"{err}; pass restart=True (CLI: --restart) to discard it and start again") from None
        old = {}
    windows = len(job.plan.windows())
    stale = old is not None and (old.get("settings") != settings or old.get("windows") != windows)
    if stale and not restart:
        diff = ", ".join(_differences(old.get("settings", {}), settings)) or "window count"
        raise ValueError(
            f"`{printable(job.folder)}` holds the windows of a run of `{printable(job.dst_path)}` with other settings "
            f"({diff}); they are never mixed in: pass restart=True (CLI: --restart) to discard them and start again."
        )
    barrier()
    if not is_main:
        _check_holder(job)
    if is_main:
        claim_work_folder(job.folder, _run_id())
        if stale or restart or old is None:  # windows without a journal are of no known run
            _clear_work_folder(job.folder)
        if not os.path.lexists(journal):
            atomic_write_json(journal, {"settings": settings, "windows": windows})
        else:
            discard_damaged_windows(job)
    barrier()


def _run_id() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def _lock_work_folder(folder: Path, dst: Path) -> tuple[int, bool]:
    """Claim ``folder`` (made if missing) and hold an exclusive ``flock`` on it; ``(descriptor, it existed)``."""
    import fcntl

    for _ in range(5):  # the folder may be removed by the run that held it between our claim and our lock: retry
        existed = os.path.lexists(folder)
        claim_work_folder(folder, _run_id())
        try:
            handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held, current = os.fstat(handle), os.lstat(folder)
        except BlockingIOError:
            os.close(handle)
            raise ValueError(
                f"another run is writing `{printable(dst)}` (it holds the work folder `{printable(folder)}`); wait "
                "for it to end"
            ) from None
        except FileNotFoundError:
            os.close(handle)
            continue
        except BaseException:
            os.close(handle)
            raise
        if (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev) and stat.S_ISDIR(current.st_mode):
            return handle, existed
        os.close(handle)
    raise ValueError(f"work folder `{printable(folder)}` keeps changing; is another run starting? Try again")


@contextlib.contextmanager
def hold_work_folder(job: SceneJob, is_main: bool = True) -> Iterator[None]:
    """Hold the work folder of ``job`` for a whole run: claimed (made with this run's marker, or one that this
    tool made), locked (``flock``; another run of the same output is refused with one line), the temporary files
    of an interrupted commit of its output and map swept when it resumes, and removed at the end if nothing was
    saved in it.

    Args:
        job (`SceneJob`): the scene.
        is_main (`bool`, defaults to `True`): the main process holds the folder, and under ``accelerate launch``
            writes its [`launch_id`] into it ([`HOLDER`]); the others of the launch share it (nothing is done for
            them here: [`open_journal`] checks that their launch holds it).

    Raises:
        ValueError: the folder is a link, a file, a folder this tool did not make, or held by another run.
    """
    if not is_main:
        yield
        return
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - Windows: no lock
        claim_work_folder(job.folder, _run_id())
        yield
        return
    job.folder.parent.mkdir(parents=True, exist_ok=True)
    handle, existed = _lock_work_folder(job.folder, job.dst_path)
    try:
        if existed:  # a run of this output was interrupted: maybe while it committed
            for output in (job.dst_path, uncertainty_path(job.dst_path)):
                for temporary in stale_temporaries(output):
                    temporary.unlink(missing_ok=True)
        launch = launch_id()
        if launch is not None:  # the other processes of this launch check it before they write a window
            atomic_write_text(job.folder / HOLDER, launch)
        yield
    finally:
        try:
            if os.path.isdir(job.folder) and not os.path.islink(job.folder):
                if set(os.listdir(job.folder)) <= {WORK_MARKER, HOLDER}:
                    shutil.rmtree(job.folder)
        finally:
            os.close(handle)
