"""The embedded default model: complete, small, offline, loadable both ways, and better than bicubic on real images.

The quality checks run on the three sample images shipped in ``assets/samples`` (UCMerced validation images
``<class>28``-``34``, never seen in training), so they run in a user's clone too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from neurop_diff_diffusers import (
    DEFAULT_MODEL_PATH,
    GalerkinNeuralOperator,
    NeurOpDiffPipeline,
    bicubic_prior,
    cli,
    has_default_model,
    load_default_pipeline,
)
from neurop_diff_diffusers.data import bicubic_degrade, pil_to_tensor
from neurop_diff_diffusers.defaults import DEFAULT_SETTINGS
from neurop_diff_diffusers.metrics.quality import image_metrics, quantize_8bit
from neurop_diff_diffusers.pipelines.uncertainty_calibration import call_error_bound, check_error_bound

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "assets" / "samples").glob("*.png"))


@pytest.fixture(scope="module")
def pipe():
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _metrics(image01: torch.Tensor, hr: torch.Tensor) -> tuple[float, float]:
    values = image_metrics(quantize_8bit(image01) / 255.0, (hr + 1) / 2)
    return values["psnr"].item(), values["ssim"].item()


def test_the_embedded_model_ships_complete_small_and_safetensors_only():
    assert has_default_model()
    index = json.loads((DEFAULT_MODEL_PATH / "model_index.json").read_text())
    assert index["_class_name"] == "NeurOpDiffPipeline"
    assert {k for k in index if not k.startswith("_")} == {
        "unet",
        "neural_operator",
        "scheduler",
        "default_strength",
        "default_eta",
        "default_data_consistency_steps",
        "residual",
        "uncertainty_error_bound_90",
    }
    # residual v-prediction (docs/diffusion-parameterisation.md), sampled from pure noise by default
    assert index["residual"] is True and index["default_strength"] == 1.0
    # back-projection onto the LR by default, chosen by measurement (README, "Can I trust the detail?")
    assert index["default_data_consistency_steps"] == 10
    # the uncertainty map's 90 % error bound, fitted on training images (README, "Can I trust the detail?")
    # (N = 4 at x4): one for the command's default steps, one for 30 and one for the 10 steps it was first fitted at
    calibrations = check_error_bound(index["uncertainty_error_bound_90"])
    assert [(c["num_samples"], c["num_inference_steps"]) for c in calibrations] == [(4, 10), (4, 25), (4, 30)]
    assert call_error_bound(index, 4, 4.0, DEFAULT_SETTINGS["steps"]) == 13.3934
    assert call_error_bound(index, 4, 2.0, DEFAULT_SETTINGS["steps"]) is None  # no bound at x2 (not fitted there)
    scheduler = json.loads((DEFAULT_MODEL_PATH / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    weights = sorted(DEFAULT_MODEL_PATH.rglob("*.safetensors"))
    assert [w.parent.name for w in weights] == ["neural_operator", "unet"]
    assert sum(w.stat().st_size for w in weights) <= 25 * 2**20
    assert not [p for p in DEFAULT_MODEL_PATH.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]


def test_the_model_card_has_hub_metadata_and_every_scale():
    card = (DEFAULT_MODEL_PATH / "README.md").read_text()
    head = card.split("---")[1]
    for field in ("library_name: diffusers", "pipeline_tag: image-to-image", "license: apache-2.0", "psnr", "ssim"):
        assert field in head
    for scale in ("x2", "x4", "x8"):
        assert f"| {scale}" in card
    assert "python training/evaluate.py" in card and "python training/train_neurop_diff.py" in card


def test_load_default_pipeline_gives_the_trained_components(pipe):
    assert isinstance(pipe, NeurOpDiffPipeline)
    assert isinstance(pipe.neural_operator, GalerkinNeuralOperator)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.num_train_timesteps == 2000
    assert pipe.unet.config.in_channels == 6 and pipe.unet.config.out_channels == 3
    # trained weights, not a fresh preset: the last UNet layer is not at its initialisation
    assert pipe.unet.conv_out.weight.abs().sum() > 0


def test_diffusers_loads_the_embedded_folder_identically(pipe):
    other = DiffusionPipeline.from_pretrained(DEFAULT_MODEL_PATH)
    assert isinstance(other, NeurOpDiffPipeline)
    for a, b in zip(pipe.unet.state_dict().values(), other.unet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_the_prior_beats_bicubic_on_unseen_real_images(pipe, sample):
    hr = pil_to_tensor(PIL.Image.open(sample))[None]
    lr = bicubic_degrade(hr, 4)  # [-1, 1]; the pipeline takes [0, 1]
    prior = pipe((lr + 1) / 2, output_size=(256, 256), prior_only=True, output_type="pt").images
    bicubic = (bicubic_prior(lr, (256, 256)) + 1) / 2
    prior_psnr, _ = _metrics(prior, hr)
    bicubic_psnr, _ = _metrics(bicubic, hr)
    assert prior_psnr >= bicubic_psnr + 0.5


def test_the_pipeline_restores_an_unseen_real_image_and_is_seeded(pipe):
    hr = pil_to_tensor(PIL.Image.open(SAMPLES[0]))[None]
    lr = bicubic_degrade(hr, 4)  # [-1, 1]; the pipeline takes [0, 1]

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return pipe(
            (lr + 1) / 2, output_size=(256, 256), num_inference_steps=50, generator=generator, output_type="pt"
        ).images

    sr = run(0)
    torch.testing.assert_close(sr, run(0), rtol=0, atol=0)
    prior = pipe((lr + 1) / 2, output_size=(256, 256), prior_only=True, output_type="pt").images
    bicubic = (bicubic_prior(lr, (256, 256)) + 1) / 2
    sr_psnr, sr_ssim = _metrics(sr, hr)
    prior_psnr, _ = _metrics(prior, hr)
    bicubic_psnr, bicubic_ssim = _metrics(bicubic, hr)
    # the default sampler (strength = config.default_strength) beats bicubic; it stays close to its prior
    assert sr_psnr > bicubic_psnr and sr_ssim > bicubic_ssim
    assert abs(sr_psnr - prior_psnr) < 0.5


def test_the_papers_sampler_does_not_collapse_on_an_unseen_real_image(pipe):
    """Strength 1.0 from pure noise, deterministic DDIM (eta 0), 20 steps: the paper's sampler."""
    hr = pil_to_tensor(PIL.Image.open(SAMPLES[1]))[None]
    lr = bicubic_degrade(hr, 4)
    generator = torch.Generator().manual_seed(0)
    sr = pipe(
        (lr + 1) / 2,
        output_size=(256, 256),
        num_inference_steps=20,
        strength=1.0,
        eta=0.0,
        generator=generator,
        output_type="pt",
    ).images
    bicubic = (bicubic_prior(lr, (256, 256)) + 1) / 2
    assert _metrics(sr, hr)[0] >= _metrics(bicubic, hr)[0] + 0.5
    colour_shift = (quantize_8bit(sr).mean(dim=(0, 2, 3)) - quantize_8bit((hr + 1) / 2).mean(dim=(0, 2, 3))).abs()
    assert colour_shift.max() <= 2.0, colour_shift


def test_the_command_line_uses_the_embedded_model_by_default(tmp_path, capsys):
    src = tmp_path / "in.png"
    PIL.Image.open(SAMPLES[0]).resize((40, 30), PIL.Image.BICUBIC).save(src)
    assert cli.main(["upscale", str(src), "--scale", "2", "--steps", "2", "-o", str(tmp_path / "out.png")]) == 0
    assert PIL.Image.open(tmp_path / "out.png").size == (80, 60)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert str(DEFAULT_MODEL_PATH) in out and "in_channels" in out


def test_prior_only_from_the_command_line_matches_the_library(pipe, tmp_path):
    src = tmp_path / "in.png"
    PIL.Image.open(SAMPLES[1]).resize((48, 48), PIL.Image.BICUBIC).save(src)
    assert cli.main(["upscale", str(src), "--scale", "3", "--prior-only", "-o", str(tmp_path / "p.png")]) == 0
    expected = pipe(PIL.Image.open(src), scale=3, prior_only=True).images[0]
    np.testing.assert_array_equal(np.array(PIL.Image.open(tmp_path / "p.png")), np.array(expected))


def test_a_geotiff_scene_upscales_with_the_embedded_model_and_keeps_its_georeferencing(tmp_path):
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo]")
    from rasterio.transform import from_origin

    rgb = np.array(PIL.Image.open(SAMPLES[2]).resize((48, 40), PIL.Image.BICUBIC)).transpose(2, 0, 1)
    src = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 48, "height": 40, "count": 3, "dtype": "uint8", "crs": "EPSG:26910"}
    with rasterio.open(src, "w", transform=from_origin(500000, 4200000, 0.3, 0.3), **profile) as dst:
        dst.write(rgb)
    assert cli.main(["upscale", str(src), "--scale", "2.5", "--steps", "20"]) == 0
    with rasterio.open(tmp_path / "scene_x2.5.tif") as out:
        assert out.crs.to_epsg() == 26910 and out.shape == (100, 120) and out.dtypes == ("uint8",) * 3
        assert out.transform.a == pytest.approx(0.12) and (out.transform.c, out.transform.f) == (500000, 4200000)
        result = torch.from_numpy(out.read().astype(np.float32) / 255.0)[None]
    # a restoration of the scene, not noise: close to the bicubic upsampling of the input
    bicubic = (bicubic_prior(torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1)[None], (100, 120)) + 1) / 2
    assert image_metrics(result, bicubic)["psnr"].item() > 24


def test_a_built_wheel_carries_the_model_and_the_card_templates(tmp_path):
    """What `pip install` gets: the weights and the card templates as real files, usable without the repository."""
    pytest.importorskip("setuptools", reason="building a wheel without build isolation needs setuptools")
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    for name in ("src", "model_cards"):
        shutil.copytree(repo / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", "dist"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel offline here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("neurop_diff_diffusers-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    installed = site / "neurop_diff_diffusers"
    for name in ("neurop_diff_template.md", "neural_operator_template.md"):
        copy = installed / "model_card_templates" / name
        assert not copy.is_symlink() and copy.read_bytes() == (repo / "model_cards" / name).read_bytes()
    shipped = sorted(p.relative_to(DEFAULT_MODEL_PATH) for p in DEFAULT_MODEL_PATH.rglob("*") if p.is_file())
    for relative in shipped:
        copy = installed / "weights" / DEFAULT_MODEL_PATH.name / relative
        assert copy.read_bytes() == (DEFAULT_MODEL_PATH / relative).read_bytes(), relative

    # The installed copy, imported from outside any checkout, finds both on its own.
    code = (
        "import neurop_diff_diffusers as n, neurop_diff_diffusers.runtime.model_card as m; "
        "print(n.__file__); print(n.DEFAULT_MODEL_PATH); print(m.template_path('pipeline').read_text()[:3])"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    module_file, model_path, card_start = done.stdout.splitlines()
    assert Path(module_file).is_relative_to(site) and Path(model_path).is_relative_to(site)
    assert card_start == "---"


@pytest.mark.parametrize("device", ["cuda", "mps", "cuda:9"])
def test_an_unavailable_device_is_a_clear_value_error(device):
    from neurop_diff_diffusers.utils import available_devices

    if device in available_devices():
        pytest.skip(f"{device} exists on this machine")
    with pytest.raises(ValueError, match=r"^`device` '.+' is not available on this machine; available here: cpu"):
        load_default_pipeline(device=device)
