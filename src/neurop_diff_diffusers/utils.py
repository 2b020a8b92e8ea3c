"""Small shared helpers: atomic file writes (a temporary file beside the target, then a rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write ``path`` by calling ``write(temporary_path)`` and renaming: never a partial file at ``path``.

    The temporary file lies in the target's folder and has its suffix (so that PIL / rasterio pick the format); it
    is removed if ``write`` fails or is interrupted. The result gets the usual permissions (``0666 & ~umask``).

    Args:
        path: the target file.
        write: a function that writes the file at the path it is given.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda p: pathlib.Path(p).write_text("hi")).read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """[`atomic_write`] of a UTF-8 text."""
    return atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """[`atomic_write`] of indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
