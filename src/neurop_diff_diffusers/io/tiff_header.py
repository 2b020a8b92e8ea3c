"""Budgets of a TIFF's header, checked by reading its image file directories (IFDs) before GDAL parses anything.

GDAL parses every tag of a TIFF when it opens it, and some parses cost more than the file's size suggests: a 30 MB
GeoTIFF of 16 x 16 pixels whose ``GDAL_METADATA`` tag holds 100,000 items kept GDAL busy for minutes (each item is
inserted into a list searched item by item), and a BigTIFF directory may declare billions of tags. So every input is
read here first, with plain bounded reads of the IFD chain (a few bytes per tag, no tag value but ``GDAL_METADATA``'s,
itself only once its size is within budget), and refused, naming the limit, when

- the chain holds more than [`MAX_TIFF_IMAGES`] images (pages, overviews and masks),
- one image's directory holds more than [`MAX_TIFF_TAGS`] tags,
- the text tags (``ImageDescription``, ``GDAL_METADATA`` and every other ASCII tag) hold more than
  [`MAX_METADATA_BYTES`] bytes over the file,
- ``GDAL_METADATA`` holds more than [`MAX_METADATA_ITEMS`] items over the file.

A real GeoTIFF has a few dozen tags per image and a few kilobytes of metadata. A directory that points outside the
file, or back into the chain, ends the walk: GDAL then says what is wrong with the file.

Example:
    >>> import struct, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "many.tif"
    >>> ifd = struct.pack("<H", 600) + struct.pack("<HHII", 65000, 3, 1, 0) * 600 + struct.pack("<I", 0)
    >>> _ = path.write_bytes(b"II*\\x00" + struct.pack("<I", 8) + ifd)
    >>> check_tiff_header(path)
    Traceback (most recent call last):
    ...
    ValueError: image 1 of the TIFF has 600 tags, more than the 512 allowed (MAX_TIFF_TAGS)
"""

from __future__ import annotations

import os
import struct

#: Images (IFDs) in a TIFF's main chain: pages, overviews and masks.
MAX_TIFF_IMAGES = 1024
#: Tags in one image's directory.
MAX_TIFF_TAGS = 512
#: Bytes of text tags over the file (``ImageDescription``, ``GDAL_METADATA``, other ASCII tags).
MAX_METADATA_BYTES = 1 << 20
#: Items of ``GDAL_METADATA`` (dataset and band metadata) over the file.
MAX_METADATA_ITEMS = 10_000

_GDAL_METADATA = 42112
_IMAGE_DESCRIPTION = 270
_ASCII = 2
#: Bytes of one value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8, SLONG8, IFD8).
_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


class _Layout:
    """Classic TIFF or BigTIFF, little- or big-endian: how an IFD is laid out."""

    def __init__(self, head: bytes) -> None:
        self.order = "<" if head[:2] == b"II" else ">"
        self.big = head[2:4] in (b"+\x00", b"\x00+")
        self.count = "Q" if self.big else "H"  # the number of entries of an IFD
        self.entry = 20 if self.big else 12  # tag (2), type (2), count (4 / 8), value or offset (4 / 8)
        self.word = "Q" if self.big else "I"  # counts, offsets and the next IFD's offset
        self.inline = 8 if self.big else 4  # values of up to this many bytes sit in the entry itself

    def unpack(self, fmt: str, data: bytes) -> int:
        return struct.unpack(self.order + fmt, data)[0]


def check_tiff_header(path: str | os.PathLike) -> None:
    """Refuse, before GDAL parses it, a TIFF whose header is over the budgets of this module; other files pass.

    Args:
        path (`str | os.PathLike`): the file (anything that does not start with a TIFF / BigTIFF signature passes:
            GDAL's allow-list refuses it).

    Raises:
        ValueError: one line naming the count, the limit and its name (e.g. ``MAX_METADATA_ITEMS``).
    """
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+") or len(head) < 16:
            return
        layout = _Layout(head)
        size = os.fstat(f.fileno()).st_size
        offset = layout.unpack("Q", head[8:16]) if layout.big else layout.unpack("I", head[4:8])
        seen: set[int] = set()
        text = items = 0
        while offset and offset not in seen and offset < size:
            seen.add(offset)
            if len(seen) > MAX_TIFF_IMAGES:
                raise ValueError(
                    f"the TIFF chains more than {MAX_TIFF_IMAGES} images (pages, overviews, masks), more than "
                    "allowed (MAX_TIFF_IMAGES)"
                )
            f.seek(offset)
            raw = f.read(struct.calcsize(layout.count))
            if len(raw) < struct.calcsize(layout.count):
                return
            n = layout.unpack(layout.count, raw)
            if n > MAX_TIFF_TAGS:
                image = len(seen)
                raise ValueError(
                    f"image {image} of the TIFF has {n} tags, more than the {MAX_TIFF_TAGS} allowed (MAX_TIFF_TAGS)"
                )
            entries = f.read(n * layout.entry)
            following = f.read(layout.inline)
            for start in range(0, len(entries) - layout.entry + 1, layout.entry):
                entry = entries[start : start + layout.entry]
                tag, kind = layout.unpack("H", entry[0:2]), layout.unpack("H", entry[2:4])
                if kind != _ASCII and tag not in (_IMAGE_DESCRIPTION, _GDAL_METADATA):
                    continue
                count = layout.unpack(layout.word, entry[4 : 4 + layout.inline])
                text += count * _TYPE_BYTES.get(kind, 1)
                if text > MAX_METADATA_BYTES:
                    raise ValueError(
                        f"the TIFF's text tags (ImageDescription, GDAL_METADATA, ...) hold more than "
                        f"{MAX_METADATA_BYTES} bytes, more than allowed (MAX_METADATA_BYTES)"
                    )
                if tag == _GDAL_METADATA:
                    items += _metadata_items(f, layout, entry, count * _TYPE_BYTES.get(kind, 1))
                    if items > MAX_METADATA_ITEMS:
                        raise ValueError(
                            f"the TIFF's GDAL_METADATA holds {items} items or more, more than the "
                            f"{MAX_METADATA_ITEMS} allowed (MAX_METADATA_ITEMS)"
                        )
            offset = layout.unpack(layout.word, following) if len(following) == layout.inline else 0


def _metadata_items(f, layout: _Layout, entry: bytes, nbytes: int) -> int:
    """The ``<Item`` elements of a ``GDAL_METADATA`` value of ``nbytes`` (within the byte budget already)."""
    value = entry[4 + layout.inline :]
    if nbytes > layout.inline:
        here = f.tell()
        f.seek(layout.unpack(layout.word, value))
        value = f.read(nbytes)
        f.seek(here)
    return value[:nbytes].count(b"<Item")
