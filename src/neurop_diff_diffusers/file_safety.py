"""What the tool may write or read besides its declared input: one policy for outputs, maps, manifests, work folders,
window files and temporary names, and budgets for the JSON files it reads.

- **Local names only.** A name that GDAL would read as something else than a local file (a ``/vsi`` virtual file
  system, a URL, a ``DRIVER:`` form at its start) is refused. A real local file whose name merely contains a colon
  stays usable when written as a path (``./GTIFF_DIR:1:x.tif``).
- **Never through a symbolic link, never over what is not a regular file.** A target is examined with ``lstat``: a
  link, a directory, a device, a FIFO or a socket found where a file is to be written is refused, never replaced. A
  file that is read back (a window file, a journal) is opened with ``O_NOFOLLOW``.
- **Folders the tool made.** A work folder carries a marker with the run's id; a folder without it (or a link, or a
  file) found at that name is refused, so a run never writes into, nor removes, a folder it did not make.
- **Budgets before parsing.** A JSON file is refused from its size before it is read, and from its nesting depth
  before it is parsed (Python's parser would recurse).
- **Names in messages** are escaped ([`printable`]): a newline or a control character in a file name cannot forge a
  second line of output.

Every refusal is a ``ValueError`` whose message names the path and the rule.

Example:
    >>> check_local_name("/vsimem/o.tif", "output")
    Traceback (most recent call last):
    ...
    ValueError: output `/vsimem/o.tif`: only local file names are written (no /vsi prefix, URL or DRIVER: name)
    >>> printable("all good.png\\nneurop-diff: fake")
    'all good.png\\\\nneurop-diff: fake'
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

# Names GDAL would interpret as something else than a local file: virtual file systems, URLs, `DRIVER:name` syntax.
_SPECIAL_NAME = re.compile(r"^(/vsi|\\vsi|[a-z][a-z0-9+.-]*://|[A-Za-z0-9_]{2,}:)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Name of the marker file inside every work folder the tool creates (its content: the run's id).
WORK_MARKER = ".neurop-diff-work"
#: Largest JSON file read by default (model folders' configs, journals, manifests' lines are far smaller).
MAX_JSON_BYTES = 16 * 1024 * 1024
#: Deepest nesting of a JSON value read by default (our files nest at most a few levels).
MAX_JSON_DEPTH = 64


def printable(name: str | os.PathLike) -> str:
    """``name`` with control characters escaped (``\\n``, ``\\t``, ``\\x1b`` ...): safe to print on one line.

    Args:
        name (`str | os.PathLike`): a file name or any text that came from outside.

    Example:
        >>> printable("a\\tb.png")
        'a\\\\tb.png'
    """
    text = os.fspath(name)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def check_local_name(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a `Path`, or one ``ValueError`` if GDAL could take it for something else than a local file.

    Args:
        path (`str | os.PathLike`): the name given by the user (or made by the tool).
        what (`str`): what it names, for the message (``"output"``, ``"work folder"``...).

    Raises:
        TypeError: ``path`` is not a str or path of str.
        ValueError: a ``/vsi`` name, a URL, a ``DRIVER:`` form or a NUL character.

    Example:
        >>> check_local_name("./GTIFF_DIR:1:x.tif", "output").name
        'GTIFF_DIR:1:x.tif'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}.")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError(f"{what} must be a str or os.PathLike of str, got bytes.")
    if _SPECIAL_NAME.match(text) or "\x00" in text:
        raise ValueError(
            f"{what} `{printable(text)}`: only local file names are written (no /vsi prefix, URL or DRIVER: name)"
        )
    return Path(text)


def gdal_path(path: str | os.PathLike) -> str:
    """The name to hand GDAL for a local file: absolute, so that no ``DRIVER:`` or ``/vsi`` reading can apply.

    ``Path("./GTIFF_DIR:1:x.tif")`` prints as ``GTIFF_DIR:1:x.tif``, which GDAL reads as a driver's syntax; its
    absolute form is read as the file it is.

    Args:
        path (`str | os.PathLike`): a local file name (checked with [`check_local_name`]).

    Example:
        >>> gdal_path("GTIFF_DIR:1:x.tif").startswith("/")
        True
    """
    return os.path.abspath(os.fspath(path))


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_file_target(path: str | os.PathLike, what: str) -> Path:
    """Check a file the tool is about to write: a local name, and nothing but a regular file (or nothing) there.

    Args:
        path (`str | os.PathLike`): the target.
        what (`str`): what it is, for the message.

    Raises:
        ValueError: a GDAL-special name, or a symbolic link, directory, device, FIFO or socket at ``path``.

    Example:
        >>> check_file_target("/dev/null", "output")
        Traceback (most recent call last):
        ...
        ValueError: output `/dev/null` is a device: only a regular file is replaced
    """
    target = check_local_name(path, what)
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file in the path: the caller's mkdir says so)
        return target
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} `{printable(target)}` is {_kind(mode)}: only a regular file is replaced")
    return target


def make_dirs_inside(folder: str | os.PathLike, root: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Create ``folder`` and its missing parents below ``root`` without following a symbolic link below ``root``.

    ``root`` itself is the user's declared folder (it may be reached through links the user chose); every part of
    ``folder`` below it must be a real folder or is created as one.

    Args:
        folder (`str | os.PathLike`): a folder inside ``root``.
        root (`str | os.PathLike`): the declared output folder.
        what (`str`): what the folder is for, for the message.
        create (`bool`, defaults to `True`): create the missing parts; ``False`` only checks the parts that exist
            (nothing is made, e.g. before an input is planned).

    Raises:
        ValueError: ``folder`` is not inside ``root``, or a part of it is a link or not a folder.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> make_dirs_inside(root / "a" / "b", root, "output folder").is_dir()
        True
    """
    root, folder = Path(root), Path(folder)
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        raise ValueError(f"{what} `{printable(folder)}` is not inside `{printable(root)}`") from None
    if ".." in parts:
        raise ValueError(f"{what} `{printable(folder)}` leaves `{printable(root)}`")
    current = root
    for part in parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not create:
                return folder
            try:
                os.mkdir(current)
            except FileExistsError:
                pass  # made meanwhile: examined below
            mode = os.lstat(current).st_mode
        if not stat.S_ISDIR(mode):
            raise ValueError(f"{what} `{printable(current)}` is {_kind(mode)}: only a real folder is written into")
    return folder


def claim_work_folder(folder: str | os.PathLike, run_id: str, create: bool = True) -> Path:
    """Create a work folder marked with ``run_id``, or accept one that this tool made (with any run's marker).

    Args:
        folder (`str | os.PathLike`): the work folder's path.
        run_id (`str`): written into the marker of a new folder.
        create (`bool`, defaults to `True`): create the folder when it does not exist.

    Returns:
        `Path`: the folder.

    Raises:
        ValueError: a link, a file or a folder without the tool's marker at ``folder``.

    Example:
        >>> import tempfile, pathlib
        >>> work = pathlib.Path(tempfile.mkdtemp()) / ".out.neurop-diff-scene"
        >>> (claim_work_folder(work, "run-1") / WORK_MARKER).read_text()
        'run-1'
    """
    folder = check_local_name(folder, "work folder")
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        if not create:
            return folder
        os.mkdir(folder)
        _write_new(folder / WORK_MARKER, run_id.encode())
        return folder
    if not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else _kind(mode)
        raise ValueError(f"work folder `{printable(folder)}` is {kind}, not a folder this tool made: remove it first")
    try:
        marker_mode = os.lstat(folder / WORK_MARKER).st_mode
    except FileNotFoundError:
        marker_mode = None
    if marker_mode is None or not stat.S_ISREG(marker_mode):
        raise ValueError(f"work folder `{printable(folder)}` was not made by this tool (no {WORK_MARKER} marker)")
    return folder


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_bytes_no_follow(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """Read a regular file, never through a link, refusing it from its size first.

    The file is opened without blocking, so a FIFO (which would wait for a writer) is refused like a directory or a
    device, at once.

    Args:
        path (`str | os.PathLike`): the file.
        max_bytes (`int`): the largest size accepted.
        what (`str`): what the file is, for the message.

    Raises:
        ValueError: a link or not a regular file, or larger than ``max_bytes``.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> _ = f.write_text("{}")
        >>> read_bytes_no_follow(f, 10, "journal")
        b'{}'
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        if os.path.islink(path):
            raise ValueError(f"{what} `{printable(path)}` is a symbolic link: not followed") from err
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{what} `{printable(path)}` is {_kind(info.st_mode)}: only a regular file is read")
        data = f.read(max_bytes + 1) if info.st_size <= max_bytes else b""
        if info.st_size > max_bytes or len(data) > max_bytes:
            size = max(info.st_size, len(data))
            raise ValueError(f"{what} `{printable(path)}` has {size} bytes or more, more than the {max_bytes} allowed")
        return data


def read_text_no_follow(path: str | os.PathLike, max_bytes: int, what: str) -> str:
    """A UTF-8 text file read like [`read_bytes_no_follow`]: within ``max_bytes``, never through a link, no FIFO.

    Args:
        path (`str | os.PathLike`): the file.
        max_bytes (`int`): the largest size accepted.
        what (`str`): what the file is, for the message (e.g. ``"`images_from`"``).

    Raises:
        ValueError: a link or not a regular file, larger than ``max_bytes``, or not UTF-8 text.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "list.txt"
        >>> _ = f.write_text("airplane30.png\\n")
        >>> read_text_no_follow(f, 100, "`images_from`").splitlines()
        ['airplane30.png']
    """
    data = read_bytes_no_follow(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} `{printable(path)}` is not UTF-8 text") from None


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text, found without parsing it (strings skipped).

    Args:
        text (`str`): the JSON text.

    Example:
        >>> json_depth('{"a": [1, {"b": "[[["}]}')
        3
    """
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        char = token.group(0)
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads_bounded(text: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses a text nested deeper than ``max_depth`` before parsing it.

    Args:
        text (`str`): the JSON text.
        what (`str`): what it is, for the message.
        max_depth (`int`, defaults to [`MAX_JSON_DEPTH`]): the deepest nesting accepted.

    Raises:
        ValueError: too deep, or not JSON (the message names ``what``).

    Example:
        >>> loads_bounded("[" * 100 + "]" * 100, "journal")
        Traceback (most recent call last):
        ...
        ValueError: journal: JSON nested 100 levels deep, more than the 64 allowed
    """
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"{what}: JSON nested {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{what}: not valid JSON ({err})") from None


def load_json_file(
    path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Read a JSON file within budgets: its size checked before reading, its depth before parsing, no link followed.

    Args:
        path (`str | os.PathLike`): the file.
        what (`str`): what it is, for the message.
        max_bytes (`int`, defaults to [`MAX_JSON_BYTES`]): the largest file accepted.
        max_depth (`int`, defaults to [`MAX_JSON_DEPTH`]): the deepest nesting accepted.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "model_index.json"
        >>> _ = f.write_text('{"_class_name": "NeurOpDiffPipeline"}')
        >>> load_json_file(f, "model_index.json")["_class_name"]
        'NeurOpDiffPipeline'
    """
    text = read_text_no_follow(path, max_bytes, what)
    return loads_bounded(text, f"{what} `{printable(path)}`", max_depth)
