"""The uncertainty map files say what they hold: the samples, what the spread is, and the model's calibrated 90 %
error-bound factor where it applies to the run (a GeoTIFF map as GDAL tags, a plain image's map in its TIFF
description)."""

import json

import numpy as np
import pytest
from PIL import Image

rasterio = pytest.importorskip("rasterio")

from conftest import smooth_scene, write_geotiff  # noqa: E402
from neurop_diff_diffusers import build_pipeline  # noqa: E402
from neurop_diff_diffusers.io.paths import uncertainty_path  # noqa: E402
from neurop_diff_diffusers.jobs.scene import upscale_scene  # noqa: E402
from neurop_diff_diffusers.jobs.upscale_file import JobOptions, plan_file, run_job  # noqa: E402
from neurop_diff_diffusers.pipelines.uncertainty_calibration import ERROR_BOUND_KEY  # noqa: E402


def _calibrated(steps: int, factor: float = 6.5):
    pipe = build_pipeline("tiny")
    entry = {
        "coverage": 0.9,
        "num_samples": 2,
        "uncertainty_sigma": 2.0,
        "flip_samples": True,
        "num_inference_steps": steps,
        "factors": [{"scales": [1.0, 8.0], "factor": factor}],
    }
    pipe.register_to_config(**{ERROR_BOUND_KEY: entry})
    return pipe


@pytest.mark.parametrize("fitted_steps, tagged", [(2, True), (3, False)], ids=["fitted-settings", "other-steps"])
def test_a_geotiff_map_carries_its_samples_and_the_bound_where_it_applies(tmp_path, fitted_steps, tagged):
    src = write_geotiff(tmp_path / "s.tif", smooth_scene(16, 16))
    out = upscale_scene(
        _calibrated(fitted_steps), src, tmp_path / "o.tif", scale=2, num_samples=2, num_inference_steps=2, window=16
    )
    with rasterio.open(uncertainty_path(out)) as spread:
        tags = spread.tags()
    assert tags["NEUROP_DIFF_NUM_SAMPLES"] == "2"
    assert (
        "ddof=1" in tags["NEUROP_DIFF_SPREAD"] and "ddof=1" in json.loads(tags["NEUROP_DIFF_UNCERTAINTY"])["statistic"]
    )
    assert tags.get("NEUROP_DIFF_ERROR_BOUND_90") == ("6.5" if tagged else None)


def test_a_plain_images_map_holds_its_tags_in_the_tiff_description(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(src)
    job = plan_file(src, tmp_path / "out.png", 2.0, None, JobOptions(steps=2, num_samples=2))
    run_job(_calibrated(2, factor=3.25), job)
    with Image.open(job.uncertainty) as spread:
        assert spread.mode == "F" and spread.size == (32, 24)
        tags = json.loads(spread.tag_v2[270])
    assert tags["NEUROP_DIFF_NUM_SAMPLES"] == "2" and tags["NEUROP_DIFF_ERROR_BOUND_90"] == "3.25"


def test_the_apps_legend_says_how_to_read_the_map_as_an_error_bound():
    from neurop_diff_diffusers.app import uncertainty_legend

    spread = np.full((4, 4), 0.01, np.float32)
    with_bound = uncertainty_legend(spread, 4, 0.01, error_bound=8.0)
    assert "Error bound: **8 x the map**" in with_bound and with_bound.endswith("stands for errors up to 0.08.")
    assert "Error bound" not in uncertainty_legend(spread, 4, 0.01)
