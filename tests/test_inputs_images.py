"""Plain image inputs (PNG, JPEG, TIFF read with PIL) and what their outputs keep: other formats refused
whatever their name, one frame only, EXIF orientation applied, low-bit and 16-bit PNGs read by their bit depth,
alpha kept (nearest), grey kept grey, ICC profiles kept; NaN / inf model outputs refused everywhere; an output that is
the input refused."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.ImageCms
import pytest
import torch
from PIL import Image

from conftest import cli_messages, one_error_line, run_cli
from neurop_diff_diffusers import NonFiniteOutputError, build_pipeline
from neurop_diff_diffusers.cli import batch as cli_batch
from neurop_diff_diffusers.cli import upscale as cli_upscale
from neurop_diff_diffusers.io.image_files import (
    PlainImage,
    UnsupportedImageError,
    nearest_resize,
    png_header,
    read_plain_image,
    write_plain_image,
)
from neurop_diff_diffusers.jobs import upscale_file as upscale_job

FAST = ("--model", "preset:tiny", "--prior-only")
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
SRGB = PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(path: Path, samples: np.ndarray, bits: int, colour_type: int, extra: bytes = b"") -> Path:
    """A PNG written by hand (filter type None): any bit depth and colour type, ``extra`` chunks before the data."""
    height, width = samples.shape[:2]
    rows = b""
    for row in samples.reshape(height, -1):
        if bits < 8:
            text = "".join(format(int(v), f"0{bits}b") for v in row)
            text += "0" * (-len(text) % 8)
            rows += b"\0" + int(text, 2).to_bytes(len(text) // 8, "big")
        else:
            rows += b"\0" + row.astype(np.uint8 if bits == 8 else ">u2").tobytes()
    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    data = _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


# ---- formats: PIL's PNG, JPEG and TIFF decoders only ----


@pytest.mark.parametrize("kind", ["GIF", "BMP", "WEBP", "PPM"])
def test_another_format_renamed_png_is_refused_before_the_model(tmp_path, capsys, no_model, kind):
    path = tmp_path / "scene.png"
    Image.fromarray(RGB).save(path, format=kind)
    with Image.open(path) as image:  # PIL itself would decode it
        assert image.format == kind
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys) == f"{path}: not an image PIL can read (PNG, JPEG or TIFF expected)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.png"]


def test_another_format_is_refused_by_the_app_upload_check(tmp_path):
    pytest.importorskip("gradio", reason="the web app is the optional extra [app]")
    from neurop_diff_diffusers.app import validate_upload

    path = tmp_path / "scene.tif"
    Image.fromarray(RGB).save(path, format="BMP")
    with pytest.raises(upscale_job.InputFailed, match=r"^scene.tif: not a TIFF file"):  # by content, not name
        validate_upload(path, 10**6)


# ---- one image per file ----


def test_animated_png_is_refused(tmp_path, capsys, no_model):
    path = tmp_path / "anim.png"
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB), Image.fromarray(RGB // 2)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys) == (
        f"{path}: an animated PNG of 3 frames; neurop-diff upscales one image: extract the frame you want"
    )


def test_multi_page_tiff_is_refused(tmp_path, capsys, no_model):
    path = tmp_path / "pages.tif"
    Image.fromarray(RGB).save(path, save_all=True, append_images=[Image.fromarray(255 - RGB)])
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys) == (
        f"{path}: a TIFF of 2 pages (images); neurop-diff upscales one image per file: split the pages first "
        "(e.g. tiffsplit)"
    )


def test_tiff_with_a_reduced_resolution_page_is_one_image(tmp_path):
    """A page flagged as a reduced-resolution copy (NewSubfileType 1, an overview) is not an image of its own."""
    path = tmp_path / "overview.tif"
    overview = Image.fromarray(RGB[::2, ::2])
    overview.encoderinfo = {"tiffinfo": {254: 1}}
    Image.fromarray(RGB).save(path, save_all=True, append_images=[overview])
    with Image.open(path) as image:
        image.seek(1)
        assert image.n_frames == 2 and image.tag_v2[254] == 1
    np.testing.assert_array_equal(read_plain_image(path).rgb, RGB)


def test_mpo_camera_jpeg_is_read_as_its_main_image(tmp_path):
    path = tmp_path / "camera.jpg"
    Image.fromarray(RGB).save(path, format="MPO", save_all=True, append_images=[Image.fromarray(RGB[::2, ::2])])
    with Image.open(path) as image:
        assert image.format == "MPO" and image.n_frames == 2
        main = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(read_plain_image(path).rgb, main)


# ---- EXIF orientation ----


def _rotated(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(RGB).save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
@pytest.mark.parametrize(
    "orientation, turn",
    [
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied_in_the_reader(tmp_path, suffix, orientation, turn):
    path = _rotated(tmp_path / f"photo{suffix}", orientation)  # stored 12 x 16 (h x w)
    stored = RGB
    if suffix == ".jpg":  # lossy: the stored pixels as decoded (PIL's JPEG decoder does not turn them)
        with Image.open(path) as raw:
            stored = np.asarray(raw.convert("RGB"))
    decoded = upscale_job.read_image_array(path, warn=False)
    np.testing.assert_array_equal(decoded.rgb, turn(stored))
    assert upscale_job.read_image_file(path).size == turn(stored).shape[1::-1]


def test_size_and_output_use_the_shown_orientation(tmp_path, capsys):
    path = _rotated(tmp_path / "photo.jpg", 6)
    assert run_cli("upscale", path, "--size", "14x24", *FAST) == 2  # not smaller than the stored 12 x 16
    assert one_error_line(capsys) == (
        f"{path}: --size 14x24 is smaller than the input 16x12 (height x width); neurop-diff only upscales"
    )
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 0
    with Image.open(tmp_path / "photo_x2.jpg") as out:
        assert out.size == (24, 32)  # width x height: upright
        assert out.getexif().get(274) in (None, 1)  # no stale Orientation tag turning it again


# ---- low-bit PNGs ----


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_grey_png_is_scaled_to_the_full_range(tmp_path, bits):
    top = 2**bits - 1
    raw = (np.arange(12 * 16).reshape(12, 16) % (top + 1)).astype(np.uint8)
    decoded = read_plain_image(_png(tmp_path / "g.png", raw, bits, 0))
    assert decoded.grey and decoded.bits == 8 and decoded.rgb.dtype == np.uint8
    np.testing.assert_array_equal(decoded.rgb[..., 0], raw * (255 // top))
    assert decoded.rgb.max() == 255


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_low_bit_palette_png_uses_its_colours(tmp_path, bits):
    colours = RNG.integers(0, 256, (2**bits, 3), dtype=np.uint8)
    raw = (np.arange(12 * 16).reshape(12, 16) % 2**bits).astype(np.uint8)
    path = _png(tmp_path / "p.png", raw, bits, 3, _chunk(b"PLTE", colours.tobytes()))
    decoded = read_plain_image(path)
    assert not decoded.grey and decoded.alpha is None
    np.testing.assert_array_equal(decoded.rgb, colours[raw])


def test_low_bit_values_left_raw_by_a_decoder_are_scaled(tmp_path, monkeypatch):
    """The bit depth comes from the PNG header: a decoder that returned the raw 4-bit values is corrected."""
    from neurop_diff_diffusers.io import image_files

    raw = (np.arange(12 * 16).reshape(12, 16) % 16).astype(np.uint8)
    path = _png(tmp_path / "g.png", raw, 4, 0)
    raw_image = Image.fromarray(raw)
    raw_image.format = "PNG"
    monkeypatch.setattr(image_files, "open_image", lambda p, rawmode=None: raw_image)
    np.testing.assert_array_equal(read_plain_image(path).rgb[..., 0], raw * 17)


def test_low_bit_grey_colour_key_gives_alpha(tmp_path):
    raw = (np.arange(12 * 16).reshape(12, 16) % 16).astype(np.uint8)
    decoded = read_plain_image(_png(tmp_path / "g.png", raw, 4, 0, _chunk(b"tRNS", struct.pack(">H", 5))))
    np.testing.assert_array_equal(decoded.alpha, np.where(raw == 5, 0, 255))


def test_low_bit_png_through_the_cli_is_not_dark(tmp_path):
    raw = (np.arange(12 * 16).reshape(12, 16) % 16).astype(np.uint8)
    path = _png(tmp_path / "g.png", raw, 4, 0)
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 0
    with Image.open(tmp_path / "g_x2.png") as out:
        assert out.mode == "L"
        assert abs(np.asarray(out, np.float64).mean() - (raw * 17).mean()) < 0.15 * 255


# ---- 16-bit colour PNGs ----


@pytest.mark.parametrize("channels, colour_type", [(3, 2), (4, 6), (2, 4)], ids=["RGB", "RGBA", "LA"])
def test_16_bit_colour_png_is_read_with_all_its_bits(tmp_path, channels, colour_type):
    samples = RNG.integers(0, 65536, (12, 16, channels)).astype(np.uint16)
    decoded = read_plain_image(_png(tmp_path / "s.png", samples, 16, colour_type))
    colours = samples[..., :3] if channels >= 3 else np.repeat(samples[..., :1], 3, axis=-1)
    assert decoded.bits == 16 and decoded.rgb.dtype == np.float32 and decoded.grey == (channels == 2)
    np.testing.assert_array_equal(decoded.rgb, colours.astype(np.float32) / 65535.0)
    if channels in (2, 4):
        np.testing.assert_array_equal(decoded.alpha, samples[..., -1])
    else:
        assert decoded.alpha is None


def test_16_bit_png_with_every_row_filter(tmp_path):
    """Rows filtered with Sub, Up, Average and Paeth (GDAL's libpng) are unfiltered with 6-byte pixels."""
    rasterio = pytest.importorskip("rasterio", reason="GDAL writes the PNG with libpng's adaptive filters")
    import warnings

    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    rng = np.random.default_rng(1)
    smooth = (np.cumsum(rng.integers(0, 300, (3, 40, 50)), axis=2) % 65536).astype(np.uint16)
    path = tmp_path / "gdal.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile() as memory:
            with memory.open(driver="GTiff", width=50, height=40, count=3, dtype="uint16") as dst:
                dst.write(smooth)
            with memory.open() as src:
                copy(src, path, driver="PNG")
    data = path.read_bytes()
    idat = b"".join(
        data[i + 8 : i + 8 + n]
        for i, n in _chunks(data)
        if data[i + 4 : i + 8] == b"IDAT"  # the filters actually used
    )
    raw = zlib.decompress(idat)
    assert len({raw[r * (50 * 6 + 1)] for r in range(40)} - {0}) >= 3
    decoded = read_plain_image(path)
    np.testing.assert_array_equal(decoded.rgb, smooth.transpose(1, 2, 0).astype(np.float32) / 65535.0)


def _chunks(data: bytes):
    i = 8
    while i < len(data):
        n = struct.unpack(">I", data[i : i + 4])[0]
        yield i, n
        i += 12 + n


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels, colour_type", [(3, 2), (4, 6), (2, 4)], ids=["RGB", "RGBA", "LA"])
def test_16_bit_outputs_round_trip_exactly(tmp_path, suffix, channels, colour_type):
    samples = RNG.integers(0, 65536, (12, 16, channels)).astype(np.uint16)
    source = read_plain_image(_png(tmp_path / "s.png", samples, 16, colour_type))
    source = source._replace(icc_profile=SRGB if channels > 2 else None)
    out = tmp_path / f"o{suffix}"
    write_plain_image(source.rgb, source, out, overwrite=False)  # an identity "model"
    back = read_plain_image(out) if suffix == ".png" else _tiff_samples(out)
    if suffix == ".png":
        assert png_header(out) == (16, colour_type)
        np.testing.assert_array_equal(back.rgb, source.rgb)
        np.testing.assert_array_equal(back.alpha, source.alpha)
        assert back.icc_profile == source.icc_profile
    else:
        np.testing.assert_array_equal(back, samples)
    if suffix == ".tif" and channels == 2:
        return  # PIL has no reader for 16-bit grey + alpha TIFFs (GDAL and libtiff have)
    with Image.open(out) as image:  # PIL opens it (an 8-bit view)
        assert image.size == (16, 12)
        assert image.info.get("icc_profile") == source.icc_profile


def test_16_bit_tiff_of_several_strips_round_trips(tmp_path):
    samples = RNG.integers(0, 65536, (300, 200, 3)).astype(np.uint16)  # 54 rows a strip: 6 strips
    source = PlainImage(samples.astype(np.float32) / 65535.0, False, 16, None, None)
    write_plain_image(source.rgb, source, tmp_path / "o.tif", overwrite=False)
    with Image.open(tmp_path / "o.tif") as image:
        assert image.tag_v2[258] == (16, 16, 16) and len(image.tag_v2[273]) == 6
    np.testing.assert_array_equal(_tiff_samples(tmp_path / "o.tif"), samples)


def _tiff_samples(path: Path) -> np.ndarray:
    """A 16-bit TIFF's samples, read by GDAL (PIL has no 16-bit colour mode)."""
    rasterio = pytest.importorskip("rasterio", reason="reads the 16-bit colour TIFF back")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            assert src.dtypes[0] == "uint16"
            return src.read().transpose(1, 2, 0)


def test_48_bit_png_gives_a_48_bit_png_through_the_cli(tmp_path, capsys):
    samples = (np.linspace(0, 65535, 12 * 16 * 3).reshape(12, 16, 3)).astype(np.uint16)
    path = _png(tmp_path / "deep.png", samples, 16, 2)
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 0
    assert "warning" not in capsys.readouterr().err
    out = tmp_path / "deep_x2.png"
    assert png_header(out) == (16, 2)
    back = read_plain_image(out)
    assert back.rgb.shape == (24, 32, 3) and back.bits == 16
    levels = np.unique(np.rint(back.rgb * 65535))
    assert len(levels) > 256  # more levels than 8 bits hold
    assert run_cli("upscale", path, "--scale", "2", "-o", tmp_path / "deep.jpg", *FAST) == 0
    assert cli_messages(capsys.readouterr().err) == [
        f"neurop-diff: warning: {path}: its 16-bit samples are written as 8-bit (JPEG) in {tmp_path / 'deep.jpg'}"
    ]


def _tiff_12_bit(path: Path, values: np.ndarray) -> Path:
    """An uncompressed 12-bit grey TIFF written by hand (two samples in three bytes, most significant bits first)."""
    height, width = values.shape
    assert width % 2 == 0
    pairs = values.reshape(height, width // 2, 2).astype(np.uint32)
    packed = np.stack([pairs[..., 0] >> 4, ((pairs[..., 0] & 15) << 4) | (pairs[..., 1] >> 8), pairs[..., 1] & 255])
    data = packed.transpose(1, 2, 0).astype(np.uint8).tobytes()
    entries = [(256, 3, width), (257, 3, height), (258, 3, 12), (259, 3, 1), (262, 3, 1), (273, 4, 8)]
    entries += [(277, 3, 1), (278, 3, height), (279, 4, len(data))]  # the data right after the header, then the IFD
    ifd_at = 8 + len(data) + len(data) % 2
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + struct.pack("<H" if kind == 3 else "<I", value).ljust(4, b"\0")
        for tag, kind, value in entries
    )
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd_at) + data + b"\0" * (len(data) % 2) + ifd + b"\0" * 4)
    return path


def test_12_bit_grey_tiff_is_scaled_by_its_bit_depth(tmp_path):
    values = np.linspace(0, 4095, 12 * 16).astype(np.uint16).reshape(12, 16)
    path = _tiff_12_bit(tmp_path / "g12.tif", values)
    with Image.open(path) as image:
        assert image.mode == "I;16" and np.asarray(image).max() == 4095  # PIL leaves the 12-bit values
    decoded = read_plain_image(path)
    assert decoded.grey and decoded.bits == 16
    np.testing.assert_allclose(decoded.rgb[..., 0], values / 4095.0, rtol=1e-6)


def test_16_bit_colour_tiff_is_not_read_as_8_bits(tmp_path):
    source = PlainImage(RNG.random((12, 16, 3)).astype(np.float32), False, 16, None, None)
    path = tmp_path / "rgb16.tif"
    write_plain_image(source.rgb, source, path, overwrite=False)
    with Image.open(path) as image:
        assert image.mode == "RGB"  # PIL's 8-bit view
    with pytest.raises(UnsupportedImageError, match=r"a TIFF of 16-bit RGB samples, which PIL reads as 8 bits"):
        read_plain_image(path)


# ---- alpha, grey, ICC ----


def test_rgba_keeps_its_alpha_upscaled_with_nearest(tmp_path, capsys):
    alpha = np.where(np.add.outer(np.arange(12), np.arange(16)) % 5 == 0, 0, 255).astype(np.uint8)
    alpha[0, 0] = 128
    path = tmp_path / "a.png"
    Image.fromarray(np.dstack([RGB, alpha])).save(path)
    assert run_cli("upscale", path, "--scale", "2.5", *FAST) == 0
    assert "warning" not in capsys.readouterr().err
    with Image.open(tmp_path / "a_x2.5.png") as out:
        assert out.mode == "RGBA" and out.size == (40, 30)
        out_alpha = np.asarray(out)[..., 3]
    np.testing.assert_array_equal(out_alpha, nearest_resize(alpha, (30, 40)))
    assert set(np.unique(out_alpha)) == {0, 128, 255}  # copied, never interpolated


def test_alpha_into_a_jpeg_is_dropped_with_one_warning(tmp_path, capsys):
    path = tmp_path / "a.png"
    Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 100, np.uint8)])).save(path)
    out = tmp_path / "a.jpg"
    assert run_cli("upscale", path, "--scale", "2", "-o", out, *FAST) == 0
    assert cli_messages(capsys.readouterr().err) == [
        f"neurop-diff: warning: {path}: its alpha channel is dropped (JPEG has none) in {out}"
    ]
    assert Image.open(out).mode == "RGB"


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_grey_alpha_and_palette_transparency_are_kept(tmp_path, mode):
    if mode == "LA":
        image = Image.fromarray(np.dstack([RGB[..., 0], np.where(RGB[..., 1] > 128, 255, 0).astype(np.uint8)]))
        expected_alpha = np.asarray(image)[..., 1]
    else:
        image = Image.fromarray(RGB).quantize(8)
        image.info["transparency"] = 3
        expected_alpha = np.where(np.asarray(image) == 3, 0, 255)
    decoded = read_plain_image(_save(image, tmp_path / "t.png"))
    assert decoded.grey == (mode == "LA")
    np.testing.assert_array_equal(decoded.alpha, expected_alpha)


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_grey_input_gives_grey_output_the_mean_of_the_model_channels(tmp_path):
    source = read_plain_image(_save(Image.fromarray(RGB[..., 0]), tmp_path / "g.png"))
    assert source.grey and source.bits == 8
    result = RNG.random((24, 32, 3)).astype(np.float32)
    for suffix in (".png", ".jpg", ".tif"):
        write_plain_image(result, source, tmp_path / f"o{suffix}", overwrite=False)
        with Image.open(tmp_path / f"o{suffix}") as out:
            assert out.mode == "L", suffix
            if suffix != ".jpg":
                np.testing.assert_array_equal(np.asarray(out), np.rint(result.mean(axis=-1) * 255).astype(np.uint8))


def test_float_grey_tiff_gives_a_float_tiff(tmp_path):
    source = read_plain_image(_save(Image.fromarray(np.full((12, 16), 0.25, np.float32)), tmp_path / "f.tif"))
    assert source.grey and source.bits == 32
    result = np.full((24, 32, 3), 0.3, np.float32)
    write_plain_image(result, source, tmp_path / "o.tif", overwrite=False)
    write_plain_image(result, source, tmp_path / "o.png", overwrite=False)
    with Image.open(tmp_path / "o.tif") as tif, Image.open(tmp_path / "o.png") as png:
        assert tif.mode == "F" and png.mode == "I;16"
        np.testing.assert_allclose(np.asarray(tif), 0.3, rtol=1e-6)
        assert (np.asarray(png) == round(0.3 * 65535)).all()


def test_grey_input_through_the_cli_is_grey(tmp_path):
    path = _save(Image.fromarray(RGB[..., 0]), tmp_path / "g.png")
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 0
    assert Image.open(tmp_path / "g_x2.png").mode == "L"


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_icc_profile_is_kept(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    Image.fromarray(RGB).save(path, icc_profile=SRGB)
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 0
    with Image.open(tmp_path / f"c_x2{suffix}") as out:
        assert out.info.get("icc_profile") == SRGB


def test_icc_profile_of_another_colour_space_is_not_copied(tmp_path, capsys):
    path = tmp_path / "g.png"
    Image.fromarray(RGB[..., 0]).save(path, icc_profile=SRGB)  # an RGB profile on a grey image
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 0
    assert cli_messages(capsys.readouterr().err) == [
        f"neurop-diff: warning: {path} has an ICC profile of colour space 'RGB' that does not describe the grey "
        "output; it is not copied."
    ]
    assert "icc_profile" not in Image.open(tmp_path / "g_x2.png").info


# ---- NaN / inf outputs: one place, every path ----


@pytest.fixture(scope="module")
def nan_pipe():
    pipe = build_pipeline("tiny", seed=0)
    with torch.no_grad():
        for module in (pipe.unet, pipe.neural_operator):
            for parameter in module.parameters():
                parameter.fill_(float("nan"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("prior_only", [False, True])
def test_pipeline_refuses_a_nan_output(nan_pipe, prior_only):
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteOutputError, match=r"NaN or infinite values \(768 of 768\); no image is produced"):
        nan_pipe(image, scale=2, num_inference_steps=1, prior_only=prior_only, output_type="np")


def test_check_finite_output_counts_inf():
    from neurop_diff_diffusers.pipelines.image_processing import check_finite_output

    sample = torch.zeros(1, 3, 2, 2)
    assert check_finite_output(sample) is sample
    sample[0, 1, 0, 0] = float("inf")
    with pytest.raises(NonFiniteOutputError, match=r"\(1 of 12\)"):
        check_finite_output(sample)


def test_cli_writes_nothing_for_a_nan_model(tmp_path, capsys, monkeypatch, nan_pipe):
    path = _save(Image.fromarray(RGB), tmp_path / "g.png")
    monkeypatch.setattr(cli_upscale, "load_job_pipeline", lambda spec, device: nan_pipe)
    assert run_cli("upscale", path, "--scale", "2", "--steps", "1") == 2
    line = one_error_line(capsys)
    assert line.startswith(f"{path}: the model's output holds NaN or infinite values (2304 of 2304)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def test_batch_writes_nothing_for_a_nan_model(tmp_path, capsys, monkeypatch, nan_pipe):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _save(Image.fromarray(RGB), inputs / "a.png")
    out = tmp_path / "out"
    monkeypatch.setattr(cli_batch, "load_job_pipeline", lambda spec, device: nan_pipe)
    assert run_cli("upscale", "--input-dir", inputs, "--out-dir", out, "--scale", "2", "--steps", "1") == 2
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"]
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "error" and "NaN or infinite values" in record["message"]


def test_geotiff_writes_nothing_for_a_nan_model(tmp_path, nan_pipe):
    rasterio = pytest.importorskip("rasterio", reason="the GeoTIFF path is the extra [geo]")
    from rasterio.transform import Affine

    from neurop_diff_diffusers.jobs.scene import upscale_geotiff

    src = tmp_path / "scene.tif"
    profile = dict(driver="GTiff", width=16, height=12, count=3, dtype="uint8", crs="EPSG:32631")
    with rasterio.open(src, "w", transform=Affine(10, 0, 500000, 0, -10, 4000000), **profile) as dst:
        dst.write(RGB.transpose(2, 0, 1))
    with pytest.raises(NonFiniteOutputError):
        upscale_geotiff(nan_pipe, src, tmp_path / "out.tif", scale=2, num_inference_steps=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_app_reports_a_nan_model_in_one_line(tmp_path, monkeypatch, nan_pipe):
    pytest.importorskip("gradio", reason="the web app is the optional extra [app]")
    from neurop_diff_diffusers import app

    monkeypatch.setattr(app, "load_job_pipeline", lambda spec, device: nan_pipe)
    upscaler = app.Upscaler(app.AppConfig(model="preset:tiny"), tmp_path / "work")
    (tmp_path / "work").mkdir()
    upload = _save(Image.fromarray(RGB), tmp_path / "up.png")
    with pytest.raises(app.InputFailed) as caught:
        upscaler.run(upload, scale=2, steps=1)
    assert str(caught.value).startswith("up.png: the model's output holds NaN or infinite values")
    assert "\n" not in str(caught.value)
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]


@pytest.mark.parametrize("kind", ["RGBA", "I;16", "RGB48"])
def test_app_download_keeps_alpha_and_16_bits_and_previews_rgb(tmp_path, kind):
    pytest.importorskip("gradio", reason="the web app is the optional extra [app]")
    from neurop_diff_diffusers import app

    upload = tmp_path / "up.png"
    if kind == "RGBA":
        Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])).save(upload)
    elif kind == "I;16":
        Image.fromarray(RGB[..., 0].astype(np.uint16) * 257).save(upload)
    else:
        _png(upload, RGB.astype(np.uint16) * 257, 16, 2)
    (tmp_path / "work").mkdir()
    upscaler = app.Upscaler(app.AppConfig(model="preset:tiny"), tmp_path / "work")
    result = upscaler.run(upload, scale=2, steps=1, prior_only=True)
    assert result["output"].mode == "RGB" and result["output"].size == (32, 24)
    with Image.open(result["png"]) as download:
        assert download.mode == {"RGBA": "RGBA", "I;16": "I;16", "RGB48": "RGB"}[kind]
        if kind == "RGBA":
            assert (np.asarray(download)[..., 3] == 7).all()
    if kind == "RGB48":
        assert png_header(result["png"]) == (16, 2)


# ---- the output is never the input ----


def _alias(kind: str, good: Path) -> Path:
    if kind == "same":
        return good
    if kind == "dot":
        return Path(os.curdir) / good.name
    alias = good.with_name("alias.png")
    if kind == "symlink":
        alias.symlink_to(good.name)
    else:
        os.link(good, alias)
    return alias


@pytest.mark.parametrize("kind", ["same", "dot", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused(tmp_path, capsys, no_model, monkeypatch, kind):
    good = _save(Image.fromarray(RGB), tmp_path / "in.png")
    before = good.read_bytes()
    monkeypatch.chdir(tmp_path)
    target = _alias(kind, good)
    assert run_cli("upscale", "in.png", "--scale", "2", "-o", target, "--overwrite", *FAST) == 2
    assert one_error_line(capsys) == (
        f"in.png: the output {target} is this input itself (the same file); choose another output"
    )
    assert good.read_bytes() == before


def test_an_output_that_is_another_input_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.png", "a_x2.png"):
        _save(Image.fromarray(RGB), tmp_path / name)
    before = (tmp_path / "a_x2.png").read_bytes()
    assert run_cli("upscale", "a.png", "a_x2.png", "--scale", "2", "--overwrite", *FAST) == 2
    assert cli_messages(capsys.readouterr().err) == [
        "neurop-diff: error: a.png: the output a_x2.png is the input a_x2.png (the same file); choose another output",
        "neurop-diff: 1 of 2 inputs failed; the others were written",
    ]
    assert (tmp_path / "a_x2.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_x2.png", "a_x2_x2.png"]


def test_batch_output_that_is_the_input_is_refused(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = _save(Image.fromarray(RGB), inputs / "a.png")
    before = good.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    os.link(good, out / "a_x2.png")  # the output name is a hard link to the input
    assert run_cli("upscale", "--input-dir", inputs, "--out-dir", out, "--scale", "2", "--overwrite", *FAST) == 2
    assert f"{good}: the output {out / 'a_x2.png'} is this input itself" in capsys.readouterr().err
    assert good.read_bytes() == before


def test_plain_image_fields():
    assert PlainImage._fields == ("rgb", "grey", "bits", "alpha", "icc_profile")
