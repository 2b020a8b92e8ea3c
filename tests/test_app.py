"""The web app (`neurop-diff serve`, app.py): uploads validated before any work, the CLI's own outputs (PNG and
GeoTIFF), bad uploads answered in the page while the server goes on, driven through gradio_client and a real
headless Chromium (Playwright, Debian's /usr/bin/chromium; skipped with the reason when absent)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web app is the optional extra [app] (gradio)")
gradio_client = pytest.importorskip("gradio_client", reason="the app tests drive it with gradio_client")

from conftest import REPO_ROOT, SAMPLES_DIR, sparse_many_band_tiff  # noqa: E402
from neurop_diff_diffusers.app import AppConfig, InputFailed, build_app, validate_upload  # noqa: E402
from neurop_diff_diffusers.cli import main  # noqa: E402

SRC = REPO_ROOT / "src"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO_ROOT / "assets" / "figures" / "app_screenshot.png"
STEPS = 2
OWN_SAMPLER = "model's own (ddim)"  # the embedded model samples with DDIM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _other_address() -> str:
    """An address of this machine other than 127.0.0.1 (its outward interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent (UDP connect only picks the interface)
        return s.getsockname()[0]


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (valid CRC) and whose data is missing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    """A 48 x 40 crop of a shipped UCMerced sample: x3.7 gives 178 x 148."""
    path = tmp_path_factory.mktemp("inputs") / "airplane.png"
    Image.open(SAMPLES_DIR / "airplane30.png").convert("RGB").crop((0, 0, 40, 48)).save(path)
    return path


@pytest.fixture(scope="module")
def bad_uploads(tmp_path_factory, crop) -> dict[str, tuple[Path, str]]:
    """Bad files and the message each must give."""
    folder = tmp_path_factory.mktemp("bad")
    data = crop.read_bytes()
    files = {
        "empty.png": (b"", "empty.png: empty file"),
        "notes.png": (b"this is not an image\n" * 10, "notes.png: not an image PIL can read"),
        "cut.png": (data[: len(data) // 2], "cut.png: damaged image"),
        "big.png": (_png_with_header(3000, 3000), "9000000 pixels; this server accepts at most 1048576"),
        "huge.png": (_png_with_header(60000, 60000), "huge.png: refused as a possible decompression bomb"),
    }
    out = {}
    for name, (content, message) in files.items():
        (folder / name).write_bytes(content)
        out[name] = (folder / name, message)
    return out


# ---- validation, before any work ----


def test_validate_upload_reads_the_header_before_decoding(crop, bad_uploads, tmp_path):
    assert validate_upload(crop, 48 * 40) == (48, 40)
    with pytest.raises(InputFailed, match=r"48x40 \(height x width\) = 1920 pixels; this server accepts at most 1919"):
        validate_upload(crop, 1919)
    for path, message in bad_uploads.values():
        with pytest.raises(InputFailed) as caught:
            validate_upload(path, 1024 * 1024)
        assert message in str(caught.value) and str(path.parent) not in str(caught.value)  # no server path shown
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputFailed, match="unsupported input"):
        validate_upload(tmp_path / "a.gif", 100)


def test_validate_upload_refuses_many_bands_and_disguised_files_from_the_header(tmp_path, monkeypatch):
    """A sparse 2,000-band file is refused from its header (no pixel read), a VRT named
    .tif in one line without GDAL opening it."""
    pytest.importorskip("rasterio")
    from rasterio.io import DatasetReader

    path = tmp_path / "bands.tif"
    sparse_many_band_tiff(path)

    def no_reading(*args, **kwargs):
        raise AssertionError("pixels were read")

    monkeypatch.setattr(DatasetReader, "read", no_reading)  # whichever code path reads a pixel goes through it
    monkeypatch.setattr(DatasetReader, "read_masks", no_reading)
    with pytest.raises(InputFailed) as caught:
        validate_upload(path, 1024 * 1024)
    assert str(caught.value) == (
        "bands.tif: the input needs 2000 bands x 1024x1024 pixels x 5 bytes = 10.5 GB, over this server's input "
        "limit 1048576 (which allows 1048576 pixels x 4 bands x 5 bytes = 21.0 MB)"
    )
    evil = tmp_path / "evil.tif"
    evil.write_text('<VRTDataset rasterXSize="8" rasterYSize="8"></VRTDataset>')
    with pytest.raises(InputFailed, match=r"^evil.tif: not a TIFF file \(a .tif / .tiff input must be a TIFF"):
        validate_upload(evil, 1024 * 1024)


@pytest.mark.parametrize("field, value", [("concurrency", 0), ("max_input_pixels", 0), ("max_queue", True)])
def test_app_config_refuses_bad_limits(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be an integer >= 1"):
        AppConfig(**{field: value})


def test_app_config_refuses_bad_precision():
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        AppConfig(dtype="int8")
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        AppConfig(dtype="float16")


# ---- one server for the tests below (the embedded model, tiny requests) ----


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("app")
    demo = build_app(AppConfig(max_output_pixels=200 * 200), workdir=workdir)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", workdir
    demo.close()


def _predict(client, path, scale=3.7, mode="scale", height=64, width=64, prior_only=False, sampler=OWN_SAMPLER):
    upload = gradio_client.handle_file(str(path))
    args = (upload, mode, scale, height, width, STEPS, 1.0, 0, prior_only, sampler, 0, True, 0.6)  # no map
    *outputs, view = client.predict(*args, api_name="/upscale")
    assert view is None  # the uncertainty view is empty without samples
    return tuple(outputs)


def test_client_gets_the_cli_output_and_bad_uploads_get_a_message(server, crop, bad_uploads, tmp_path, capsys):
    url, _ = server
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "client"))
    (before, after), prior, info, downloads = _predict(client, crop)
    assert "**178 x 148** (height x width)" in info
    assert [Path(p).name for p in downloads] == ["airplane_x3.7.png"]
    assert Image.open(after).size == Image.open(before).size == Image.open(prior).size == (148, 178)
    # The PNG is the CLI's output for the same settings, bit for bit.
    expected = tmp_path / "cli.png"
    argv = ["upscale", str(crop), "--scale", "3.7", "--steps", str(STEPS), "--seed", "0", "--strength", "1", "-o"]
    assert main([*argv, str(expected)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(downloads[0])), np.asarray(Image.open(expected)))

    for path, message in bad_uploads.values():
        with pytest.raises(gradio_client.exceptions.AppError, match=message.split(":")[-1].strip()[:30]) as caught:
            _predict(client, path)
        assert "Traceback" not in str(caught.value)
    for kwargs, message in [
        ({"scale": 10.5}, "10.5 is greater than maximum value 10"),  # Gradio's own check of the range
        ({"scale": 5.0}, "exceeds the server's limit 40000"),  # 240 x 200 output
        ({"mode": "output size", "height": 30, "width": 30}, "the output size 30x30 is smaller than the input"),
    ]:
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            _predict(client, crop, **kwargs)
    # Another sampler: the CLI's --scheduler output, bit for bit.
    (_, after), _, _, downloads = _predict(client, crop, sampler="unipc")
    assert main([*argv, str(tmp_path / "unipc.png"), "--scheduler", "unipc"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(downloads[0])), np.asarray(Image.open(tmp_path / "unipc.png")))
    assert not np.array_equal(np.asarray(Image.open(downloads[0])), np.asarray(Image.open(expected)))
    with pytest.raises(gradio_client.exceptions.AppError):
        _predict(client, crop, sampler="euler")
    # ... and the server still serves: an explicit output size, the prior alone (deterministic).
    _, prior, info, downloads = _predict(client, crop, mode="output size", height=60, width=50, prior_only=True)
    assert "**60 x 50**" in info and Image.open(downloads[0]).size == (50, 60)


def test_geotiff_upload_gives_a_georeferenced_download(server, tmp_path):
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
    from rasterio.transform import from_origin

    url, _ = server
    data = np.random.default_rng(0).integers(1000, 20000, (4, 20, 24), dtype=np.uint16)
    scene = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 24, "height": 20, "count": 4, "dtype": "uint16", "crs": "EPSG:32633"}
    with rasterio.open(scene, "w", transform=from_origin(500000.0, 4100000.0, 10.0, 10.0), **profile) as dst:
        dst.write(data)
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "client"))
    _, _, info, downloads = _predict(client, scene, scale=2.5)
    assert "**50 x 60**" in info
    png, tif = sorted(downloads, key=lambda p: Path(p).suffix)
    assert Path(png).name == "scene_x2.5.png" and Image.open(png).size == (60, 50)
    with rasterio.open(tif) as out:
        assert (out.count, out.height, out.width, out.dtypes[0]) == (4, 50, 60, "uint16")
        assert out.crs.to_string() == "EPSG:32633"
        assert out.transform.a == pytest.approx(4.0) and (out.transform.c, out.transform.f) == (500000.0, 4100000.0)


# ---- a real browser ----


def _chromium_or_skip():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (extra [test])")
    if not CHROMIUM.is_file():
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM} (.ci/run installs it with apt)")
    return sync_api


def test_browser_upscales_x3_7_and_reports_a_bad_upload(server, crop, bad_uploads, tmp_path):
    sync_api = _chromium_or_skip()
    url, _ = server
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        except sync_api.Error as err:  # e.g. a chromium whose libraries are missing: not this project's failure
            pytest.skip(f"{CHROMIUM} does not start: {str(err).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.locator("#run").wait_for()
        # The uncertainty map's controls: the samples, off by default, and the overlay toggle.
        page.locator("#uncertainty-samples").get_by_text("Uncertainty map: samples").wait_for()
        assert page.locator("#uncertainty-samples input[type=number]").input_value() == "0"
        assert page.locator("#show-overlay input[type=checkbox]").is_checked()

        def run(path: Path) -> None:
            # A page still starting, or still busy with the previous file, may miss a click or a file choice: retry.
            for attempt in range(4):
                clear = page.locator("#upload button[aria-label='Clear']")
                if clear.count():
                    clear.first.click()
                try:
                    page.locator("#upload input[type=file]").set_input_files(str(path), timeout=10_000)
                    page.locator("#upload").get_by_text(path.name).first.wait_for(timeout=10_000)
                    break
                except sync_api.TimeoutError:
                    assert attempt < 3, f"the page never took the upload {path.name}"
            page.locator("#run").click()

        # A corrupt upload: a message in the page, no traceback.
        _, message = bad_uploads["cut.png"]
        run(bad_uploads["cut.png"][0])
        page.get_by_text(message).first.wait_for()
        assert "Traceback" not in page.content()
        page.locator(".toast-close").first.click()

        # Then the server still answers: x3.7, with a progress bar over the denoising steps.
        page.locator("#scale input").fill("3.7")
        page.locator("#steps input[type=number]").fill("12")
        page.locator("#steps input[type=number]").press("Enter")
        run(crop)
        page.locator("#compare").get_by_text(re.compile(r"^\d+/12 steps")).first.wait_for()
        page.locator("#info").get_by_text("178 x 148").wait_for()
        # The before / after view zooms both images together with the mouse wheel.
        page.locator("#compare").scroll_into_view_if_needed()  # the run button may have scrolled the page
        box = page.locator("#compare").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -400)
        views = page.locator("#compare img")
        page.wait_for_function("() => document.querySelector('#compare img').style.transform.includes('scale(1.')")
        scales = [re.search(r"scale\(([\d.]+)\)", views.nth(i).get_attribute("style")) for i in range(views.count())]
        assert len(scales) == 2 and all(float(m.group(1)) > 1 for m in scales)

        link = page.locator("#downloads a").first
        link.wait_for()
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.name == "airplane_x3.7.png" and Image.open(saved).size == (148, 178)

        shot = tmp_path / "screenshot.png"
        page.screenshot(path=str(shot), full_page=True)

        # Two uncertainty samples: refused at x3.7 by the pixel budget (2 x 26,344 > 40,000), drawn at x2; the
        # overlay toggle then switches the view from the kept arrays.
        samples = page.locator("#uncertainty-samples input[type=number]")
        samples.fill("2")
        samples.press("Enter")
        page.locator("#run").click()
        page.get_by_text("52688 pixels of work, over the server's limit 40000").first.wait_for()
        page.locator(".toast-close").first.click()
        page.locator("#scale input").fill("2")
        page.locator("#steps input[type=number]").fill(str(STEPS))
        page.locator("#steps input[type=number]").press("Enter")
        page.locator("#run").click()
        page.locator("#info").get_by_text("Uncertainty over").wait_for()
        view = page.locator("#uncertainty img")
        view.wait_for()
        blended = view.get_attribute("src")
        page.locator("#show-overlay input[type=checkbox]").uncheck()
        page.wait_for_function(
            "(src) => document.querySelector('#uncertainty img').getAttribute('src') !== src", arg=blended
        )
        browser.close()
    with Image.open(shot) as image:
        assert image.width == 1100 and image.height >= 900
        if os.environ.get("NEUROP_DIFF_SAVE_SCREENSHOT"):  # how the README's screenshot is made
            half = (image.width // 2, image.height // 2)
            image.convert("RGB").resize(half, Image.LANCZOS).quantize(64).save(SCREENSHOT, optimize=True)


# ---- `neurop-diff serve` ----


def _ignore_sigint() -> None:
    """In the server's process before it starts: SIGINT ignored, as a background job of a non-interactive shell (or
    ``nohup``) starts it; the server must restore Ctrl-C itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _serving(tmp_path: Path, *options: str):
    """``neurop-diff serve OPTIONS`` in a fresh process (its own process group, SIGINT ignored as inherited from a
    background job, ``TMPDIR`` in ``tmp_path``) until its page answers; yields ``(server, port, temp)``. Whatever
    happens, the process group is killed on leaving if the server still runs: a test never leaves a server behind."""
    port = _free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TMPDIR": str(temp)}
    env.pop("GRADIO_TEMP_DIR", None)
    command = [sys.executable, "-m", "neurop_diff_diffusers.cli", "serve", "--port", str(port), *options]
    server = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_ignore_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and b"NeurOp-Diff" in page.read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        assert any(temp.iterdir())  # the app's temporary folder
        yield server, port, temp
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
        server.stdout.close()


def _left_files(temp: Path) -> list[Path]:
    """What the server left in its ``TMPDIR`` (torch itself makes an empty torchinductor_<user> folder)."""
    return [p for p in temp.iterdir() if not (p.name.startswith("torchinductor_") and not any(p.iterdir()))]


def test_serve_binds_localhost_and_leaves_no_files(tmp_path):
    with _serving(tmp_path) as (server, port, temp):  # the embedded model
        with pytest.raises(OSError):  # not on the machine's other addresses
            socket.create_connection((_other_address(), port), timeout=2).close()
        # Ctrl-C, as a user stops it (SIGINT was ignored when it started); a busy machine may catch Gradio
        # mid-shutdown, so a user's second Ctrl-C too.
        for _ in range(3):
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                continue
        assert server.poll() is not None, "neurop-diff serve did not stop on Ctrl-C"
    assert _left_files(temp) == []  # removed at exit


def test_serve_stopped_by_sigterm_removes_its_temporary_folder(tmp_path):
    # systemd, docker and `kill` stop a service with SIGTERM: the temporary folder (uploads, outputs) must go too
    # and the exit status says SIGTERM (128 + 15).
    with _serving(tmp_path, "--model", "preset:tiny") as (server, _, temp):
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        assert server.returncode == 128 + signal.SIGTERM, server.stdout.read().decode()[-2000:]
    assert _left_files(temp) == []


def test_stop_signals_restores_the_handlers():
    from neurop_diff_diffusers.app import stop_signals

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        term = signal.getsignal(signal.SIGTERM)
        with stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            with pytest.raises(SystemExit) as stopped:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs at the next bytecode; never reached
            assert stopped.value.code == 128 + signal.SIGTERM
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a second SIGTERM cannot cut the shutdown
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, before)
