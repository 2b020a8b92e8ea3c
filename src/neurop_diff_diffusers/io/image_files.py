"""Plain image files (PNG, JPEG, TIFF without georeferencing): the one reader and the one writer of the CLI, batch
mode and the web app.

[`open_image`] opens a file with PIL's PNG, JPEG and TIFF decoders only (a file of another format is refused whatever
its name), refuses animations and multi-page files, decodes it and applies its EXIF orientation, so that every size
check and the output use the orientation a viewer shows. [`read_plain_image`] turns it into the model's input and
what the output keeps: all 16 bits of 16-bit PNGs (grey, grey + alpha, RGB, RGBA), low-bit PNGs (1, 2, 4 bits)
scaled to the full range, the alpha channel, greyscale, the ICC profile. [`write_plain_image`] writes the model's
output with them: grey stays grey, alpha is upscaled with nearest (it is a mask), 16-bit sources give 16-bit PNG /
TIFF outputs, the ICC profile is copied.

Example:
    >>> import tempfile, pathlib, numpy as np, PIL.Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "grey.png"
    >>> PIL.Image.new("L", (4, 3), 200).save(path)
    >>> image = read_plain_image(path)
    >>> image.rgb.shape, image.grey, image.bits
    ((3, 4, 3), True, 8)
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageOps

#: The PIL decoders an input may use: anything else is refused, whatever the file's name (PIL picks the decoder from
#: the content; MPO, a camera JPEG with extra preview images, is opened by the JPEG decoder: its main image is used).
PIL_FORMATS = ("PNG", "JPEG", "TIFF")

#: ``NewSubfileType`` bits of a TIFF page that is not an image of its own: a reduced-resolution copy (overview) or a
#: transparency mask.
_REDUCED_OR_MASK = 0b101


class UnsupportedImageError(ValueError):
    """A readable image file that is not accepted (several frames or pages): the message is one line for the user."""


class PlainImage(NamedTuple):
    """A decoded plain image: the model's input and what its output keeps.

    Args:
        rgb: ``(H, W, 3)``, ``uint8`` for 8-bit sources, ``float32`` in ``[0, 1]`` for 16-bit (divided by 65535) and
            float ones; a grey source is repeated on the three channels.
        grey: the source has one colour channel (its output is written grey).
        bits: bits per sample of the source: 8 (also 1, 2 and 4-bit sources, scaled to 8), 16, or 32 (float).
        alpha: the alpha channel ``(H, W)``, ``uint8`` or ``uint16`` (16-bit sources), or ``None``.
        icc_profile: the source's ICC profile when it describes the output's colours (grey / RGB), else ``None``.
    """

    rgb: np.ndarray
    grey: bool
    bits: int
    alpha: np.ndarray | None
    icc_profile: bytes | None


def png_header(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(bit_depth, colour_type)`` from a PNG's ``IHDR`` chunk (always the first), or ``None`` for other files.

    Args:
        path: the file.

    Example:
        >>> import tempfile, pathlib, PIL.Image
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.png"
        >>> PIL.Image.new("RGB", (2, 2)).save(path)
        >>> png_header(path)
        (8, 2)
    """
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _frames_check(image: PIL.Image.Image, name: str) -> None:
    """Refuse an animated PNG and a TIFF of several images (overview and mask pages do not count)."""
    frames = getattr(image, "n_frames", 1)
    if frames <= 1 or image.format == "MPO":
        return
    if image.format == "PNG":
        raise UnsupportedImageError(
            f"{name}: an animated PNG of {frames} frames; neurop-diff upscales one image: extract the frame you want"
        )
    if image.format == "TIFF":
        images = 1
        for index in range(1, frames):
            image.seek(index)
            images += not int(image.tag_v2.get(254, 0)) & _REDUCED_OR_MASK
        image.seek(0)
        if images > 1:
            raise UnsupportedImageError(
                f"{name}: a TIFF of {images} pages (images); neurop-diff upscales one image per file: split the "
                "pages first (e.g. tiffsplit)"
            )


def open_image(path: str | os.PathLike, rawmode: str | None = None) -> PIL.Image.Image:
    """Open and decode a PNG, JPEG or TIFF with PIL, upright: the first step of every plain-image input.

    Only PIL's PNG, JPEG and TIFF decoders are tried ([`PIL_FORMATS`]); an animated PNG and a TIFF of several images
    are refused; the EXIF orientation is applied (and its tag removed), so the image is the one a viewer shows.

    Args:
        path: the file.
        rawmode: decode the pixels with this PIL raw mode instead of the file's own (used to read the low bytes of
            16-bit colour PNGs, which PIL decodes to 8 bits).

    Returns:
        The decoded image (its file closed).

    Raises:
        PIL.UnidentifiedImageError: not a PNG, JPEG or TIFF.
        UnsupportedImageError: several frames or pages.
        OSError, ValueError, SyntaxError, EOFError: a damaged file (as PIL raises them).
    """
    name = str(path)
    with PIL.Image.open(path, formats=list(PIL_FORMATS)) as image:
        _frames_check(image, name)
        if rawmode is not None:
            image.tile = [tile._replace(args=rawmode) for tile in image.tile]
        image.load()
    PIL.ImageOps.exif_transpose(image, in_place=True)
    return image


def _png_16_bit_colour(path: str | os.PathLike, image: PIL.Image.Image, colour_type: int) -> np.ndarray:
    """All 16 bits of a 16-bit grey + alpha, RGB or RGBA PNG, ``(H, W, C)`` ``uint16``.

    PIL decodes these to 8 bits (the high bytes). The file is decoded a second time by PIL's own decoder (which
    unfilters the rows with the right sample size) with a raw mode that keeps the other bytes: the low bytes
    (``RGB;16L`` / ``RGBA;16L`` read the big-endian samples the other way round), or, for grey + alpha (4 bytes a
    pixel), every byte (``RGBA``).
    """
    if colour_type == 4:
        raw = np.asarray(open_image(path, rawmode="RGBA"), dtype=np.uint16)  # L high, L low, A high, A low
        return (raw[..., 0::2] << 8) | raw[..., 1::2]
    rawmode = "RGB;16L" if colour_type == 2 else "RGBA;16L"
    low = np.asarray(open_image(path, rawmode=rawmode), dtype=np.uint16)
    return (np.asarray(image, dtype=np.uint16) << 8) | low


def _tiff_bits(image: PIL.Image.Image) -> int:
    """The largest ``BitsPerSample`` of a TIFF, 0 for other images."""
    if image.format != "TIFF":
        return 0
    bits = image.tag_v2.get(258, (1,))
    return max(bits) if isinstance(bits, tuple) else int(bits)


def _icc_for(image: PIL.Image.Image, grey: bool, name: str) -> bytes | None:
    """The ICC profile if it describes the output's colours (a grey or an RGB profile), else ``None`` (warned)."""
    profile = image.info.get("icc_profile")
    if not profile:
        return None
    space = bytes(profile[16:20])
    if space == (b"GRAY" if grey else b"RGB "):
        return bytes(profile)
    warnings.warn(
        f"`{name}` has an ICC profile of colour space {space.decode('latin-1').strip()!r} that does not describe the "
        f"{'grey' if grey else 'RGB'} output; it is not copied.",
        UserWarning,
        stacklevel=3,
    )
    return None


def _key_alpha(samples: np.ndarray, key: int | tuple[int, ...], top: int) -> np.ndarray | None:
    """The alpha of a PNG colour key (``tRNS``): 0 where the samples equal ``key``, ``top`` elsewhere."""
    key = np.asarray(key if isinstance(key, tuple) else (key,), dtype=np.int64)
    if samples.ndim == 2:
        samples = samples[..., None]
    if key.size != samples.shape[-1]:
        return None
    return np.where((samples == key).all(axis=-1), 0, top).astype(np.uint16 if top > 255 else np.uint8)


def read_plain_image(path: str | os.PathLike, name: str | None = None) -> PlainImage:
    """Decode a PNG, JPEG or TIFF to the model's input and what its output keeps (see [`PlainImage`]).

    - 8-bit and palette images: RGB (palette through its colours), grey for ``L`` / ``1`` and 1, 2, 4-bit grey PNGs
      (scaled to 0..255 from the bit depth in the PNG header).
    - 16-bit PNGs (grey, grey + alpha, RGB, RGBA) and 16-bit grey TIFFs: all 16 bits, divided by 65535; 12-bit grey
      TIFFs divided by 4095. A colour TIFF of more than 8 bits a sample (which PIL reads as 8) is refused: it is
      the raster path's.
    - Float grey (mode ``F``) in ``[0, 1]``; 32-bit integer grey (mode ``I``) is refused (no known range).
    - Alpha (``RGBA``, ``LA``, ``PA``, palette or colour-key transparency) is kept, unchanged, for the output.

    Args:
        path: the file.
        name: the file's name in messages (default: ``path``).

    Raises:
        UnsupportedImageError: several frames or pages, a colour TIFF of more than 8 bits a sample.
        ValueError: mode ``I``, a float image outside ``[0, 1]``, no pixels.
        PIL.UnidentifiedImageError, OSError, SyntaxError, EOFError: not a PNG / JPEG / TIFF, or damaged.
    """
    name = str(path) if name is None else name
    image = open_image(path)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"`{name}` has no pixels (size {image.size}).")
    header = png_header(path) if image.format == "PNG" else None
    mode = image.mode
    alpha = None
    tiff_bits = _tiff_bits(image)
    if tiff_bits > 8 and mode not in ("I;16", "I;16L", "I;16B", "I;16N", "F", "I"):
        raise UnsupportedImageError(
            f"{name}: a TIFF of {tiff_bits}-bit {mode} samples, which PIL reads as 8 bits; such TIFFs are read by the "
            "raster path: install the extra [geo] (rasterio)"
        )
    if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
        samples = _png_16_bit_colour(path, image, header[1])
        grey = header[1] == 4
        colours = samples[..., :1] if grey else samples[..., :3]
        if samples.shape[-1] in (2, 4):
            alpha = samples[..., -1]
        elif "transparency" in image.info:
            alpha = _key_alpha(colours, image.info["transparency"], 65535)
        unit = colours.astype(np.float32) / 65535.0
        rgb = np.repeat(unit, 3, axis=-1) if grey else unit
        return PlainImage(rgb, grey, 16, alpha, _icc_for(image, grey, name))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        samples = np.asarray(image).astype(np.uint16)
        if "transparency" in image.info:
            alpha = _key_alpha(samples, image.info["transparency"], 65535)
        top = 2**tiff_bits - 1 if 8 < tiff_bits < 16 else 65535  # a 12-bit TIFF holds 0..4095
        grey = samples.astype(np.float32) / np.float32(top)
        return PlainImage(np.repeat(grey[..., None], 3, axis=-1), True, 16, alpha, _icc_for(image, True, name))
    if mode in ("F", "I", "I;32", "I;32B", "I;32L"):
        from ..pipelines.image_processing import pil_to_array  # the API's checks and messages for these modes

        return PlainImage(pil_to_array(image, name), True, 32, None, _icc_for(image, True, name))
    if mode in ("1", "L", "LA", "La"):
        grey_alpha = image.convert("LA") if mode in ("LA", "La") else None
        samples = np.asarray(image.convert("L") if grey_alpha is None else grey_alpha.getchannel("L"), np.uint8)
        if header is not None and header[1] in (0, 4) and header[0] < 8 and samples.max() <= 2 ** header[0] - 1:
            samples = samples * np.uint8(255 // (2 ** header[0] - 1))  # a decoder that left the raw 1/2/4-bit values
        if grey_alpha is not None:
            alpha = np.asarray(grey_alpha.getchannel("A"), dtype=np.uint8)
        elif "transparency" in image.info:
            key = int(image.info["transparency"])
            if header is not None and header[0] < 8 and mode == "L":  # the tRNS key is a raw 1/2/4-bit value
                key *= 255 // (2 ** header[0] - 1)
            alpha = _key_alpha(samples, key, 255)
        rgb = np.repeat(samples[..., None], 3, axis=-1)
        return PlainImage(rgb, True, 8, alpha, _icc_for(image, True, name))
    has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
        rgb, alpha = np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return PlainImage(rgb, False, 8, alpha, _icc_for(image, False, name))


def nearest_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W, ...)`` array to ``size = (height, width)``: output pixel ``i`` takes
    input pixel ``floor(i * H / height)`` (exact integer arithmetic); values are copied, never mixed.

    Args:
        array: the array.
        size: the output ``(height, width)``.

    Example:
        >>> nearest_resize(np.array([[0, 255]], np.uint8), (2, 4)).tolist()
        [[0, 0, 255, 255], [0, 0, 255, 255]]
    """
    height, width = array.shape[:2]
    rows = np.arange(size[0]) * height // size[0]
    cols = np.arange(size[1]) * width // size[1]
    return array[rows[:, None], cols[None, :]]


def output_bits(source: PlainImage, suffix: str) -> int:
    """The bits per sample of the output: 16 for a 16-bit (or float) source written as PNG / TIFF, else 8; 32 (float)
    for a float grey source written as TIFF.

    Args:
        source: the decoded input.
        suffix: the output's suffix (``.png``, ``.jpg``, ``.tif``...).
    """
    suffix = suffix.lower()
    if suffix in (".tif", ".tiff") and source.bits == 32 and source.alpha is None:
        return 32
    return 16 if source.bits >= 16 and suffix in (".png", ".tif", ".tiff") else 8


def output_losses(source: PlainImage, suffix: str) -> list[str]:
    """What the output format cannot hold of ``source`` (JPEG: alpha, 16 bits), as phrases for a warning.

    Args:
        source: the decoded input.
        suffix: the output's suffix.
    """
    losses = []
    if suffix.lower() in (".jpg", ".jpeg"):
        if source.alpha is not None:
            losses.append("its alpha channel is dropped (JPEG has none)")
        if source.bits > 8:
            losses.append(f"its {source.bits}-bit samples are written as 8-bit (JPEG)")
    return losses


def _samples(result: np.ndarray, source: PlainImage, size: tuple[int, int], bits: int, keep_alpha: bool) -> np.ndarray:
    """The output samples ``(H, W, C)``: grey (the mean of the model's channels) or RGB, then the alpha, if any."""
    colour = result.mean(axis=-1, keepdims=True) if source.grey else result
    if bits == 32:
        return colour.astype(np.float32)
    top = 65535 if bits == 16 else 255
    dtype = np.uint16 if bits == 16 else np.uint8
    samples = np.rint(np.clip(colour, 0.0, 1.0) * top).astype(dtype)
    if keep_alpha and source.alpha is not None:
        alpha = nearest_resize(source.alpha, size)
        if alpha.dtype != dtype:  # 8 <-> 16 bits: 255 * 257 = 65535
            alpha = alpha.astype(np.uint16) * 257 if bits == 16 else np.rint(alpha / 257.0)
        samples = np.concatenate([samples, alpha.astype(dtype)[..., None]], axis=-1)
    return samples


def write_plain_image(result: np.ndarray, source: PlainImage, path: str | os.PathLike, overwrite: bool) -> None:
    """Write the model's output for ``source`` to ``path`` (atomically): grey stays grey, the alpha channel comes back
    nearest-upscaled, 16-bit sources give 16-bit PNG / TIFF outputs, the ICC profile is copied.

    Args:
        result: the pipeline's output, ``(H, W, 3)`` float in ``[0, 1]`` (``output_type="np"``).
        source: the decoded input ([`read_plain_image`]).
        path: the output; its suffix picks the format (PNG, JPEG, TIFF).
        overwrite: replace an existing file (atomically); without it an existing file is never replaced
            (``FileExistsError``).
    """
    from ..utils import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    bits = output_bits(source, suffix)
    keep_alpha = suffix not in (".jpg", ".jpeg")
    samples = _samples(result, source, result.shape[:2], bits, keep_alpha)
    icc = source.icc_profile
    if bits == 16 and samples.shape[-1] > 1:  # no PIL mode for 16-bit colour or grey + alpha
        encode = _write_png_16 if suffix == ".png" else _write_tiff_16
        atomic_write(path, lambda temp: _write_to(temp, encode, samples, icc), overwrite=overwrite)
        return
    if samples.shape[-1] == 1:
        image = PIL.Image.fromarray(samples[..., 0])  # L, I;16 or F
    else:
        image = PIL.Image.fromarray(samples)  # LA, RGB or RGBA (8-bit)
    options = {"icc_profile": icc} if icc else {}
    atomic_write(path, lambda temp: image.save(temp, **options), overwrite=overwrite)


def _write_to(temp: str, encode, samples: np.ndarray, icc: bytes | None) -> None:
    with open(temp, "wb") as f:
        encode(f, samples, icc)


def _png_chunk(f: BinaryIO, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _write_png_16(f: BinaryIO, samples: np.ndarray, icc: bytes | None) -> None:
    """A 16-bit PNG (grey + alpha, RGB or RGBA) from ``(H, W, C)`` ``uint16`` samples; rows use the Sub filter."""
    height, width, channels = samples.shape
    colour_type = {2: 4, 3: 2, 4: 6}[channels]
    f.write(b"\x89PNG\r\n\x1a\n")
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    if icc:
        _png_chunk(f, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    compressor = zlib.compressobj(6)
    step = 2 * channels  # bytes per pixel: the Sub filter's distance
    block = max(1, (1 << 20) // (width * step))
    for top in range(0, height, block):
        raw = np.ascontiguousarray(samples[top : top + block], dtype=">u2").view(np.uint8).reshape(-1, width * step)
        rows = np.empty((raw.shape[0], raw.shape[1] + 1), dtype=np.uint8)
        rows[:, 0] = 1  # filter type Sub
        rows[:, 1 : 1 + step] = raw[:, :step]
        rows[:, 1 + step :] = raw[:, step:] - raw[:, :-step]  # modulo 256
        data = compressor.compress(rows.tobytes())
        if data:
            _png_chunk(f, b"IDAT", data)
    _png_chunk(f, b"IDAT", compressor.flush())
    _png_chunk(f, b"IEND", b"")


def _write_tiff_16(f: BinaryIO, samples: np.ndarray, icc: bytes | None) -> None:
    """A 16-bit TIFF (grey + alpha, RGB or RGBA; interleaved, Deflate strips) from ``(H, W, C)`` ``uint16``.

    Laid out as the header, the strips, the values too long for an IFD entry, then the IFD, whose offset is written
    into the header last.
    """
    height, width, channels = samples.shape
    rows_per_strip = max(1, (1 << 16) // (width * channels * 2))
    f.write(b"II*\x00\x00\x00\x00\x00")
    offsets, counts = [], []
    for top in range(0, height, rows_per_strip):
        strip = zlib.compress(samples[top : top + rows_per_strip].astype("<u2").tobytes(), 6)
        offsets.append(f.tell())
        counts.append(len(strip))
        f.write(strip + b"\x00" * (len(strip) % 2))
    if f.tell() + len(icc or b"") > 2**32 - 2**16:
        raise ValueError(f"the 16-bit output of {height}x{width} is too large for a classic TIFF; write a PNG")
    alpha = channels in (2, 4)
    entries: list[tuple[int, int, list[int] | bytes]] = [  # (tag, type: 3 SHORT, 4 LONG, 7 UNDEFINED, values)
        (256, 4, [width]),
        (257, 4, [height]),
        (258, 3, [16] * channels),
        (259, 3, [8]),  # Adobe Deflate
        (262, 3, [1 if channels <= 2 else 2]),  # min-is-black / RGB
        (273, 4, offsets),
        (277, 3, [channels]),
        (278, 4, [rows_per_strip]),
        (279, 4, counts),
        (284, 3, [1]),  # interleaved
        *([(338, 3, [2])] if alpha else []),  # unassociated alpha
        (339, 3, [1] * channels),  # unsigned integers
        *([(34675, 7, icc)] if icc else []),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, values in entries:
        data = bytes(values) if kind == 7 else struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(data) <= 4:
            ifd += struct.pack("<HHI", tag, kind, len(values)) + data.ljust(4, b"\x00")
        else:
            ifd += struct.pack("<HHII", tag, kind, len(values), f.tell())
            f.write(data + b"\x00" * (len(data) % 2))
    ifd_offset = f.tell()
    f.write(ifd + b"\x00\x00\x00\x00")
    f.seek(4)
    f.write(struct.pack("<I", ifd_offset))
