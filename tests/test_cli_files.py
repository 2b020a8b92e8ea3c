"""`neurop-diff upscale` / `export` file handling: every bad file is one line and exit code 2, outputs are checked
before the model loads and never replaced by accident, 16-bit and RGBA inputs, devices, no local path exported."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_messages, one_error_line, run_cli, sparse_many_band_tiff
from neurop_diff_diffusers import NeurOpDiffPipeline
from neurop_diff_diffusers.cli import upscale as cli_upscale
from neurop_diff_diffusers.jobs import upscale_file

FAST = ("--model", "preset:tiny", "--steps", "1")
RGB = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.png"
    Image.fromarray(RGB).save(path)
    return path


def _truncated(tmp_path: Path, suffix: str) -> Path:
    full = tmp_path / f"full{suffix}"
    Image.fromarray(RGB).save(full)
    data = full.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    full.unlink()
    return path


# ---- inputs ----


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_image_is_one_line_before_the_model(tmp_path, capsys, no_model, suffix):
    path = _truncated(tmp_path, suffix)
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"{path}: damaged image (") and "truncated" in line.lower()
    assert _files(tmp_path) == [path.name]


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.tif", b"", "empty file"),
        (
            "text.tif",
            b"this is not a TIFF\n",
            "not a TIFF file (a .tif / .tiff input must be a TIFF or GeoTIFF; " + "other formats are refused)",
        ),
        ("text.png", b"hello", "not an image PIL can read (PNG, JPEG or TIFF expected)"),
    ],
)
def test_not_an_image_is_one_line(tmp_path, capsys, no_model, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys) == f"{path}: {reason}"


def test_decompression_bomb_is_refused(tmp_path, capsys, no_model):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)  # claims 100000 x 100000 RGB
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys).startswith(f"{path}: refused as a possible decompression bomb (")


def test_directory_as_input_says_so(tmp_path, capsys, no_model):
    folder = tmp_path / "photos.png"
    folder.mkdir()
    assert run_cli("upscale", folder, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys) == f"{folder}: is a directory, not an image file"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input(good, capsys, no_model):
    good.chmod(0)
    try:
        assert run_cli("upscale", good, "--scale", "2", *FAST) == 2
    finally:
        good.chmod(0o644)
    assert one_error_line(capsys) == f"{good}: cannot read it (Permission denied)"


def test_high_bit_depth_modes_in_the_api():
    """The path the CLI reads through: 16-bit scaled by 1/65535, float taken in [0, 1], 32-bit int refused."""
    from neurop_diff_diffusers.pipelines.image_processing import pil_to_array

    sixteen = pil_to_array(Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)))
    np.testing.assert_allclose(sixteen[0, :, 0], [0.0, 32768 / 65535, 1.0])
    assert sixteen.shape == (1, 3, 3) and sixteen.dtype == np.float32
    np.testing.assert_array_equal(pil_to_array(Image.fromarray(np.full((2, 2), 0.25, np.float32))), 0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pil_to_array(Image.fromarray(np.full((2, 2), 3.0, np.float32)), "x")
    with pytest.raises(ValueError, match="mode 'I' \\(32-bit integer greyscale\\)"):
        pil_to_array(Image.fromarray(np.zeros((4, 4), np.int32)), "x")


def test_size_smaller_than_the_input_is_refused(good, capsys, no_model):
    assert run_cli("upscale", good, "--size", "10x10", *FAST) == 2
    assert one_error_line(capsys) == (
        f"{good}: --size 10x10 is smaller than the input 12x16 (height x width); neurop-diff only upscales"
    )


def test_bad_file_in_a_batch_is_skipped_and_the_others_written(good, tmp_path, capsys):
    bad = _truncated(tmp_path, ".png")
    other = tmp_path / "other.jpg"
    Image.fromarray(RGB).save(other)
    out = tmp_path / "o"
    assert run_cli("upscale", good, bad, other, "--scale", "2", "--out-dir", out, *FAST) == 2
    assert cli_messages(capsys.readouterr().err) == [
        f"neurop-diff: error: {bad}: damaged image (image file is truncated)",
        "neurop-diff: 1 of 3 inputs failed; the others were written",
    ]
    assert _files(out) == ["good_x2.png", "other_x2.jpg"]


# ---- outputs ----


def test_output_that_is_a_directory(good, tmp_path, capsys, no_model):
    folder = tmp_path / "out.png"
    folder.mkdir()
    assert run_cli("upscale", good, "--scale", "2", "-o", folder, "--overwrite", *FAST) == 2
    assert one_error_line(capsys) == f"{folder}: the output is a directory; give a file name or use --out-dir"
    assert _files(folder) == []


def test_file_where_a_folder_is_needed(good, tmp_path, capsys, no_model):
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    target = blocker / "sub" / "x.png"
    assert run_cli("upscale", good, "--scale", "2", "-o", target, *FAST) == 2
    assert one_error_line(capsys) == (
        f"{target}: cannot create the folder {blocker / 'sub'}: {blocker} is a file, not a folder"
    )


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs at /sys")
def test_output_on_a_file_system_that_refuses_files(good, capsys, no_model):
    code = run_cli("upscale", good, "--scale", "2", "-o", "/sys/x.png", *FAST)
    if Path("/sys/x.png").exists():  # pragma: no cover - a /sys that takes files
        pytest.skip("/sys accepts files here")
    assert code == 2
    line = one_error_line(capsys)
    assert line.startswith("/sys/x.png: cannot write in /sys (")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes whatever the mode")
def test_unwritable_output_folder(good, tmp_path, capsys, no_model):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert run_cli("upscale", good, "--scale", "2", "--out-dir", locked / "new", *FAST) == 2
    finally:
        locked.chmod(0o755)
    assert one_error_line(capsys) == f"{locked / 'new' / 'good_x2.png'}: cannot write in {locked} (Permission denied)"
    assert _files(locked) == []


def test_unwritable_folder_found_by_probe(good, tmp_path, capsys, monkeypatch, no_model):
    """The writability probe is a real file creation; a refusal of it (EACCES) is one line before the model."""
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    assert run_cli("upscale", good, "--scale", "2", "--out-dir", tmp_path / "o", *FAST) == 2
    assert (
        one_error_line(capsys) == f"{tmp_path / 'o' / 'good_x2.png'}: cannot write in {tmp_path} (Permission denied)"
    )


def test_output_appearing_meanwhile_is_not_replaced(good, tmp_path, capsys, monkeypatch):
    out = tmp_path / "c.png"
    original = NeurOpDiffPipeline.__call__

    def racing(self, *args, **kwargs):
        out.write_bytes(b"the other run's result")  # another process commits first, during our compute
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NeurOpDiffPipeline, "__call__", racing)
    assert run_cli("upscale", good, "--scale", "2", "-o", out, *FAST) == 2
    assert one_error_line(capsys) == (
        f"{out} appeared while {good} was being upscaled; it was not replaced (pass --overwrite)"
    )
    assert out.read_bytes() == b"the other run's result"
    assert _files(tmp_path) == ["c.png", "good.png"]  # no temporary file left


def test_overwrite_replaces_a_file_appearing_meanwhile(good, tmp_path, monkeypatch):
    out = tmp_path / "c.png"
    original = NeurOpDiffPipeline.__call__

    def racing(self, *args, **kwargs):
        out.write_bytes(b"old")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NeurOpDiffPipeline, "__call__", racing)
    assert run_cli("upscale", good, "--scale", "2", "-o", out, "--overwrite", *FAST) == 0
    assert Image.open(out).size == (32, 24)
    assert _files(tmp_path) == ["c.png", "good.png"]


def test_exclusive_commit_without_hard_links(tmp_path, monkeypatch):
    """Where the file system has no hard links the commit falls back to O_EXCL: still never over a file."""
    import errno

    from neurop_diff_diffusers.utils import atomic_write

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "a.txt"
    atomic_write(target, lambda p: Path(p).write_text("mine"), overwrite=False)
    assert target.read_text() == "mine"

    def late(p):
        Path(p).write_text("second")
        target.write_text("someone else")

    target.unlink()
    with pytest.raises(FileExistsError, match="not replaced"):
        atomic_write(target, late, overwrite=False)
    assert target.read_text() == "someone else"
    assert _files(tmp_path) == ["a.txt"]


# ---- image kinds ----


def test_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path, capsys):
    grey = np.linspace(0, 40000, 12 * 16).reshape(12, 16).astype(np.uint16)  # at most 61 % of full scale
    path = tmp_path / "g.png"
    Image.fromarray(grey).save(path)
    assert run_cli("upscale", path, "--scale", "2", "--model", "preset:tiny", "--prior-only") == 0
    assert "warning" not in capsys.readouterr().err
    with Image.open(tmp_path / "g_x2.png") as out:
        assert out.mode == "I;16" and out.size == (32, 24)
        values = np.asarray(out)
    assert (values == 65535).mean() < 0.01  # the old CLI gave 97.5 % white
    assert abs(values.mean() - grey.mean()) < 0.1 * 65535


def test_rgba_keeps_its_alpha_without_a_warning(tmp_path, capsys):
    path = tmp_path / "a.png"
    Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 100, np.uint8)])).save(path)
    assert run_cli("upscale", path, "--scale", "2", "--model", "preset:tiny", "--prior-only") == 0
    assert "warning" not in capsys.readouterr().err
    with Image.open(tmp_path / "a_x2.png") as out:
        assert out.mode == "RGBA"
        assert (np.asarray(out)[..., 3] == 100).all()  # see tests/test_inputs_images.py for alpha, grey, 16 bits


# ---- device, start-up, export ----


@pytest.mark.parametrize("device", ["cuda", "mps", "cuda:7", "tpu"])
def test_unavailable_device_is_one_line(good, capsys, no_model, device):
    from neurop_diff_diffusers.utils import available_devices

    if device in available_devices():
        pytest.skip(f"{device} exists here")
    assert run_cli("upscale", good, "--scale", "2", "--device", device, *FAST) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"--device {device!r} is ") and "available here: cpu" in line


def test_help_and_bad_flags_do_not_import_torch_in_the_cli():
    """The command line's modules and the jobs they import at the top import the standard library only: the heavy
    modules load inside the commands and the jobs' functions, so that --help and a bad flag answer at once."""
    modules = ["cli", "cli.options", "cli.helpers", "cli.upscale", "cli.batch", "cli.commands", "jobs.upscale_file"]
    code = "; ".join(f"import neurop_diff_diffusers.{m}" for m in [*modules, "jobs.batch"])
    heavy = "{'torch', 'diffusers', 'numpy', 'PIL', 'rasterio', 'accelerate'}"
    code += f"; import sys; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    done = subprocess.run(
        [sys.executable, "-m", "neurop_diff_diffusers.cli", "upscale", "x.png", "--scale", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("neurop-diff: error: --scale must be")


def test_messages_name_the_flags(good, capsys, no_model):
    assert run_cli("upscale", good, "--scale", "2", "--tile-size", "64", "--tile-overlap", "40", *FAST) == 2
    assert one_error_line(capsys) == "--tile-overlap must be in [0, --tile-size / 2 = 32], got 40"


def test_interrupt_before_the_model_is_one_line(good, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(upscale_file, "check_output_location", interrupted)  # plan_file's check
    assert run_cli("upscale", good, "--scale", "2", *FAST) == 130
    assert capsys.readouterr().err == "neurop-diff: interrupted\n"


@pytest.mark.parametrize("plain", [False, True])
def test_export_writes_no_local_path(tmp_path, plain):
    out = tmp_path / "exported"
    assert run_cli("export", out, "--model", "preset:tiny", *(["--plain"] if plain else [])) == 0
    assert json.loads((out / "model_index.json").read_text()).get("_name_or_path") is None
    machine_paths = [str(tmp_path), str(Path(cli_upscale.__file__).resolve().parents[1]), str(Path.home())]
    for path in out.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            text = path.read_text()
            assert "_name_or_path" not in text or path.suffix == ".py", path
            assert not [m for m in machine_paths if m in text], path


def test_export_into_a_file_is_one_line(tmp_path, capsys, no_model):
    target = tmp_path / "file"
    target.write_text("x")
    assert run_cli("export", target, "--model", "preset:tiny") == 2
    assert one_error_line(capsys) == f"{target}: exists and is not a folder"


# ---- rasters: refused from the header, GCPs and RPCs kept ----


def _vrt_reading(secret: Path) -> str:
    return (
        '<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1" '
        f'subClass="VRTRawRasterBand"><SourceFilename relativetoVRT="0">{secret}</SourceFilename>'
        "<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>8</LineOffset></VRTRasterBand>"
        "</VRTDataset>"
    )


@pytest.mark.parametrize("batch", [False, True], ids=["upscale", "batch"])
def test_vrt_named_tif_is_refused_in_one_line_and_the_secret_never_leaks(tmp_path, capsys, request, batch):
    pytest.importorskip("rasterio")
    if not batch:
        request.getfixturevalue("no_model")  # a single file is refused before the model loads
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOPSECRET" * 16)
    inputs = tmp_path / "in"
    inputs.mkdir()
    evil = inputs / "evil.tif"
    evil.write_text(_vrt_reading(secret))
    if batch:
        code = run_cli("upscale", "--input-dir", inputs, "--out-dir", tmp_path / "out", "--scale", "2", *FAST)
    else:
        code = run_cli("upscale", evil, "--scale", "2", *FAST)
    err = capsys.readouterr().err
    assert code == 2 and "TOPSECRET" not in err
    assert "Traceback" not in err and err.count(str(evil)) == 1  # one line about it (batch: after a progress bar)
    assert f"neurop-diff: error: {evil}: not a TIFF file (a .tif / .tiff input must be a TIFF or GeoTIFF;" in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in (secret, evil)]
    assert all(b"TOPSECRET" not in p.read_bytes() for p in written)
    assert not any(p.suffix == ".tif" for p in written)


def test_many_bands_refused_from_the_header_before_any_pixel_is_read(tmp_path, capsys, no_model, monkeypatch):
    pytest.importorskip("rasterio")
    from rasterio.io import DatasetReader

    path = tmp_path / "bands.tif"
    sparse_many_band_tiff(path)

    def no_reading(*args, **kwargs):
        raise AssertionError("pixels were read")

    # the readers themselves: whichever code path reads a pixel goes through them
    monkeypatch.setattr(DatasetReader, "read", no_reading)
    monkeypatch.setattr(DatasetReader, "read_masks", no_reading)
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys) == (
        f"{path}: the input needs 2000 bands x 1024x1024 pixels x 5 bytes = 10.5 GB, over --max-pixels 16777216 "
        "(which allows 16777216 pixels x 4 bands x 5 bytes = 335.5 MB); raise it"
    )
    assert _files(tmp_path) == ["bands.tif"]


def test_complex_geotiff_is_one_line(tmp_path, capsys, no_model):
    rasterio = pytest.importorskip("rasterio")
    path = tmp_path / "slc.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="complex64") as dst:
        dst.write(np.ones((1, 4, 4), np.complex64))
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    assert one_error_line(capsys).startswith(f"{path}: complex bands (complex64) are refused")


def test_geotiff_without_rasterio_is_refused_naming_the_extra(tmp_path, capsys, no_model, monkeypatch):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=4, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(5e5, 4e6, 10, 10), nodata=0) as dst:  # fmt: skip
        dst.write(np.ones((4, 4, 4), np.uint8))
    monkeypatch.setitem(__import__("sys").modules, "rasterio", None)  # as if the package were not installed
    assert run_cli("upscale", path, "--scale", "2", *FAST) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"{path}: has georeferencing (ModelPixelScale, ModelTiepoint, GeoKeyDirectory")
    assert line.endswith("and rasterio is not installed: pip install 'neurop-diff-diffusers[geo]'")
    assert _files(tmp_path) == ["scene.tif"]
