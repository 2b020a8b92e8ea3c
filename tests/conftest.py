"""Shared test fixtures: paths to the shared real images (skipped when absent) and the repo's sample images."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ../shared/data relative to the repo root; a user's clone has none, and the tests that need it skip.
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SHARED_PAPER_DIR = REPO_ROOT.parent / "shared" / "paper"
#: Small UCMerced validation images shipped in the repo (USGS public domain).
SAMPLES_DIR = REPO_ROOT / "assets" / "samples"


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder, or skip the test with the reason."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"needs the shared real images at {SHARED_DATA_DIR} (not part of a user's clone)")
    return SHARED_DATA_DIR


@pytest.fixture(scope="module")
def pipe():
    """A tiny random pipeline (seed 0) without progress bars, one per test module."""
    from neurop_diff_diffusers import build_pipeline

    p = build_pipeline("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES_DIR


def run_cli(*args) -> int:
    """``neurop-diff ARGS`` in this process (paths and numbers as strings); its exit code."""
    from neurop_diff_diffusers.cli import main

    return main([str(a) for a in args])


def cli_messages(err: str) -> list[str]:
    """stderr without the progress bars (tqdm lines, which hold ``|``): the messages the user reads."""
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    return [line for line in lines if line.startswith("neurop-diff") or "|" not in line]


def one_error_line(capsys) -> str:
    """The one message the CLI printed, which must be an error: its text after ``neurop-diff: error: ``."""
    lines = cli_messages(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("neurop-diff: error: ")
    return lines[0].removeprefix("neurop-diff: error: ")


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the refusals must come before it. The loader that every command and the
    app call in the end is replaced (``load_job_pipeline`` imports it when called), so the guard holds whichever
    module loads the model."""
    from neurop_diff_diffusers.runtime import loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


def sparse_many_band_tiff(path: Path, bands: int = 2000, size: int = 1024) -> Path:
    """A tiny sparse GeoTIFF whose header declares ``bands`` bands of ``size`` x ``size`` (no block written): the
    band-count budget must refuse it from the header."""
    import rasterio

    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint8", compress="deflate",
                   tiled=True, blockxsize=256, blockysize=256, SPARSE_OK=True)  # fmt: skip
    with rasterio.open(path, "w", **profile):
        pass
    return path


def write_geotiff(path: Path, data, nodata=None, **extra) -> Path:
    """A small GeoTIFF of ``data`` ``(bands, H, W)`` in UTM 33N, 10 m pixels (``extra``: more creation options)."""
    import rasterio
    from rasterio.transform import from_origin

    bands, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=bands, dtype=data.dtype.name, crs="EPSG:32633")
    profile.update(transform=from_origin(500000.0, 4100000.0, 10.0, 10.0), nodata=nodata, **extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def smooth_scene(h: int, w: int, bands: int = 3, seed: int = 0):
    """A smooth uint8 scene (a random model's windows agree better on smooth content: a fair seam test)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [100 + 80 * np.sin(xx / (6 + 2 * b) + rng.uniform(0, 3)) * np.cos(yy / (9 + b)) for b in range(bands)]
    return np.stack(planes).clip(0, 255).astype(np.uint8)
