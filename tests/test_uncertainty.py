"""Several seeded samples per image (num_samples): the mean, the uncertainty map; and the back-projection option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import one_error_line
from neurop_diff_diffusers import NeurOpDiffPipelineOutput, build_pipeline
from neurop_diff_diffusers.data import bicubic_degrade
from neurop_diff_diffusers.metrics.trust import lr_agreement
from neurop_diff_diffusers.pipelines.data_consistency import back_project
from neurop_diff_diffusers.pipelines.uncertainty import (
    DEFAULT_UNCERTAINTY_SIGMA,
    flip,
    flip_each,
    pool_uncertainty,
    reduce_samples,
    sample_generators,
    sample_seeds,
)


def _lr(seed: int = 0, size: int = 12, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_num_samples_shapes_and_output_types(pipe):
    out = pipe(_lr(batch=2), scale=2, num_inference_steps=2, num_samples=3, output_type="pt")
    assert isinstance(out, NeurOpDiffPipelineOutput)
    assert out.images.shape == (2, 3, 24, 24)
    assert out.uncertainty.shape == (2, 24, 24) and out.uncertainty.dtype == torch.float32
    # the spread is taken before clamping: not bounded by 0.5 like that of [0, 1] values
    assert (out.uncertainty >= 0).all() and torch.isfinite(out.uncertainty).all() and out.uncertainty.max() > 0
    np_out = pipe(_lr(), scale=2, num_inference_steps=2, num_samples=2, output_type="np")
    assert isinstance(np_out.uncertainty, np.ndarray) and np_out.uncertainty.shape == (1, 24, 24)
    images, uncertainty = pipe(_lr(), scale=2, num_inference_steps=2, num_samples=2, return_dict=False)
    assert len(images) == 1 and uncertainty.shape == (1, 24, 24)
    # Without num_samples: no map, and the tuple is (images,) as before.
    assert pipe(_lr(), scale=2, num_inference_steps=2).uncertainty is None
    assert len(pipe(_lr(), scale=2, num_inference_steps=2, return_dict=False)) == 1


def test_num_samples_is_reproducible_and_depends_on_the_seed(pipe):
    def run(seed):
        return pipe(
            _lr(), scale=2, num_inference_steps=2, num_samples=3, output_type="pt",
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.images, b.images) and torch.equal(a.uncertainty, b.uncertainty)
    assert not torch.equal(a.images, c.images)


def test_the_mean_and_spread_equal_those_of_separate_calls(pipe):
    lr = _lr(1, batch=2)
    n = 3

    def run(**kwargs):
        gen = torch.Generator().manual_seed(5)
        return pipe(lr, scale=2, num_inference_steps=3, num_samples=n, generator=gen, output_type="pt",
                    flip_samples=False, **kwargs)  # fmt: skip

    out, pooled = run(uncertainty_sigma=0), run()
    torch.testing.assert_close(pooled.uncertainty, pool_uncertainty(out.uncertainty, DEFAULT_UNCERTAINTY_SIGMA))
    assert torch.equal(pooled.images, out.images)
    seeds = sample_seeds(torch.Generator().manual_seed(5), 2, n)
    for b in range(2):
        raw = torch.stack([
            _raw_output(pipe, lr[b : b + 1], scale=2, num_inference_steps=3,
                        generator=torch.Generator().manual_seed(seeds[b * n + k]))
            for k in range(n)
        ])  # fmt: skip
        torch.testing.assert_close(out.images[b], raw.clamp(0, 1).mean(0), atol=1e-5, rtol=0)
        _check_spread(out.uncertainty[b], raw)


def _raw_output(pipe, lr: torch.Tensor, data_consistency_steps: int = 0, **kwargs) -> torch.Tensor:
    """One call's output before clamping, on the [0, 1] scale (the last step's latents; the tiny model is not
    residual), back-projected as the pipeline does."""
    assert not pipe.residual
    captured = {}

    def keep(pipeline, step, timestep, tensors):
        captured.update(tensors)
        return tensors

    out = pipe(lr, output_type="pt", callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"],
               data_consistency_steps=data_consistency_steps, **kwargs)  # fmt: skip
    height, width = out.images.shape[-2:]
    raw = captured["latents"][..., :height, :width]
    if data_consistency_steps:
        raw = back_project(raw, lr * 2 - 1, data_consistency_steps)
    torch.testing.assert_close(out.images, (raw / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)
    return (raw / 2 + 0.5)[0]


def _check_spread(spread: torch.Tensor, raw: torch.Tensor, clamped_somewhere: bool = True) -> None:
    """The map is the sample standard deviation (ddof=1) of the separate outputs before clamping, averaged over the
    channels; the tiny random model leaves [0, 1] often, where the spread of the clamped outputs would be smaller."""
    torch.testing.assert_close(spread, raw.std(0, correction=1).mean(0), atol=1e-5, rtol=0)
    clamped = raw.clamp(0, 1).std(0, correction=1).mean(0)
    assert (spread >= clamped - 1e-6).all()
    assert (spread > clamped + 1e-3).any() == clamped_somewhere


@pytest.mark.parametrize("n", [3, 5])
def test_flip_samples_are_separate_calls_on_flipped_inputs(pipe, n):
    # not square (flips keep the shape), each output side a multiple of the UNet's factor 4 (no padding)
    lr = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(3))

    def run(**kwargs):
        gen = torch.Generator().manual_seed(7)
        return pipe(lr, scale=2, num_inference_steps=2, num_samples=n, generator=gen, output_type="pt",
                    uncertainty_sigma=0, data_consistency_steps=2, **kwargs)  # fmt: skip

    out = run()  # flip_samples=True by default
    seeds = sample_seeds(torch.Generator().manual_seed(7), 1, n)
    raw = torch.stack([
        flip(_raw_output(pipe, flip(lr, k), 2, scale=2, num_inference_steps=2,
                         generator=torch.Generator().manual_seed(seeds[k])), k)
        for k in range(n)
    ])  # fmt: skip
    torch.testing.assert_close(out.images[0], raw.clamp(0, 1).mean(0), atol=1e-5, rtol=0)
    _check_spread(out.uncertainty[0], raw, clamped_somewhere=False)  # back-projected: all inside [0, 1]
    assert not torch.allclose(out.uncertainty, run(flip_samples=False).uncertainty)  # without flips: another spread


def test_flipped_samples_are_padded_at_the_inputs_bottom_right(pipe, monkeypatch):
    """An output side that is not a multiple of the UNet's factor is padded; each flipped sample is padded on the side
    that is the input's bottom / right once flipped back, so every sample sees the padding at the same borders."""
    seen = []
    original = type(pipe)._predict_noise

    def spy(self, x, region, prior, **kwargs):
        seen.append(prior.clone())
        return original(self, x, region, prior, **kwargs)

    monkeypatch.setattr(type(pipe), "_predict_noise", spy)
    lr = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(4))  # 18 x 22: padded to 20 x 24
    pipe(lr, scale=2, num_inference_steps=1, num_samples=4, output_type="pt")
    priors = flip_each(seen[0], 4)  # each sample's prior in the input's orientation
    assert priors.shape[-2:] == (20, 24)
    for k in range(4):  # the padding replicates the last row / column of the input's orientation
        assert torch.equal(priors[k, :, 18:], priors[k, :, 17:18].expand(-1, 2, -1))
        assert torch.equal(priors[k, :, :, 22:], priors[k, :, :, 21:22].expand(-1, -1, 2))


def test_flip_samples_with_a_given_prior_and_bad_values(pipe):
    lr = _lr(size=8)
    prior = torch.rand(1, 3, 16, 16) * 2 - 1
    out = pipe(lr, scale=2, num_inference_steps=1, num_samples=4, flip_samples=True, prior=prior, output_type="pt")
    assert out.images.shape == (1, 3, 16, 16) and out.uncertainty.shape == (1, 16, 16)
    with pytest.raises(TypeError, match="`flip_samples` must be a bool"):
        pipe(lr, scale=2, num_inference_steps=1, num_samples=2, flip_samples="yes")


@pytest.mark.parametrize(("flip_samples", "frames"), [(False, 1), (True, 4), (None, 4)])
def test_the_prior_is_computed_once_for_all_samples(pipe, monkeypatch, flip_samples, frames):
    calls = []
    original = pipe.compute_prior
    monkeypatch.setattr(pipe, "compute_prior", lambda lr, *a, **k: calls.append(len(lr)) or original(lr, *a, **k))
    flips = {} if flip_samples is None else {"flip_samples": flip_samples}  # None: the default, flips
    pipe(_lr(), scale=2, num_inference_steps=2, num_samples=6, **flips)
    assert calls == [frames]  # one call: one prior per image, or per image and flip


@pytest.mark.parametrize("bad", [1, 0, -2, 65, 2.0, True, "3"])
def test_num_samples_out_of_range_is_refused_before_any_work(pipe, bad, monkeypatch):
    monkeypatch.setattr(pipe, "compute_prior", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=r"`num_samples` must be None .* \[2, 64\]"):
        pipe(_lr(), scale=2, num_inference_steps=2, num_samples=bad)


def test_pool_uncertainty_known_answers():
    flat = torch.full((2, 7, 9), 0.25)
    torch.testing.assert_close(pool_uncertainty(flat, 2.0), flat)  # a constant map stays constant, borders too
    spike = torch.zeros(1, 21, 21)
    spike[0, 10, 10] = 1.0
    pooled = pool_uncertainty(spike, 1.5)
    assert abs(float(pooled.square().sum()) - 1.0) < 1e-5  # the variance is spread, its total kept
    assert pooled[0, 10, 10] == pooled.max() and pooled[0, 10, 10] < 0.5 and pooled[0, 10, 9] > 0
    torch.testing.assert_close(pooled[0], pooled[0].T)  # isotropic
    assert pool_uncertainty(spike, 0) is spike
    tiny = pool_uncertainty(torch.rand(1, 3, 2), 4.0)  # narrower than the Gaussian: replicated borders
    assert tiny.shape == (1, 3, 2) and torch.isfinite(tiny).all()


@pytest.mark.parametrize("bad", [-0.5, 16.5, float("nan"), True, "2"])
def test_uncertainty_sigma_out_of_range_is_refused_before_any_work(pipe, bad, monkeypatch):
    monkeypatch.setattr(pipe, "compute_prior", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=r"`uncertainty_sigma` must be a number in \[0, 16\]"):
        pipe(_lr(), scale=2, num_inference_steps=2, num_samples=2, uncertainty_sigma=bad)


def test_sample_seeds_from_a_list_and_from_none():
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    seeds = sample_seeds(gens, 2, 2)
    assert seeds[:2] == sample_seeds(torch.Generator().manual_seed(1), 1, 2)
    assert seeds[2:] == sample_seeds(torch.Generator().manual_seed(2), 1, 2)
    torch.manual_seed(0)
    first = sample_seeds(None, 1, 3)
    torch.manual_seed(0)
    assert sample_seeds(None, 1, 3) == first and len(set(first)) == 3
    assert len(sample_generators(gens, 2, 3)) == 6


def test_reduce_samples_mean_of_the_clamped_samples_sample_std_before_clamping():
    x = torch.tensor([-1.5, 0.0, 1.0, 1.0, 1.4, 1.8]).view(6, 1, 1, 1).expand(6, 3, 1, 1)
    mean, spread = reduce_samples(x, 2)
    assert mean.shape == (3, 3, 1, 1) and spread.shape == (3, 1, 1)
    # Image 0: -0.25 (clamped to 0 for the mean) and 0.5 on [0, 1]: mean 0.25 -> -0.5; spread |0.5 + 0.25| / sqrt(2).
    assert mean[0, 0].item() == -0.5 and spread[0].item() == pytest.approx(0.75 / 2**0.5, abs=1e-7)
    assert mean[1, 0].item() == 1.0 and spread[1].item() == 0.0
    # Image 2: 1.2 and 1.4 on [0, 1], both clamped to 1 in the mean; their spread is kept, not 0.
    assert mean[2, 0].item() == 1.0 and spread[2].item() == pytest.approx(0.2 / 2**0.5, abs=1e-6)
    # ddof=1: three samples 0, 0.5, 1 -> standard deviation 0.5 (ddof=0 would give 0.408).
    _, spread3 = reduce_samples(torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1), 3)
    assert spread3.item() == pytest.approx(0.5, abs=1e-7)


def test_back_projection_makes_the_output_agree_with_the_lr(pipe):
    lr01 = _lr(2, size=16)
    lr = bicubic_degrade(lr01 * 2 - 1, size=(16, 16))  # on 8-bit levels
    plain = pipe(
        (lr + 1) / 2, scale=4, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)
    )
    projected = pipe(
        (lr + 1) / 2, scale=4, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0),
        data_consistency_steps=10,
    )  # fmt: skip
    before = lr_agreement(plain.images * 2 - 1, lr)
    after = lr_agreement(projected.images * 2 - 1, lr)
    assert before > 5.0  # a random tiny model does not agree with its LR
    assert after < before / 5
    assert projected.images.shape == plain.images.shape


def test_back_projection_converges_on_a_smooth_image_and_zero_steps_is_the_identity():
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    hr = torch.stack([torch.sin(3 * x), torch.cos(2 * y), x * y]).unsqueeze(0) * 0.8
    lr = bicubic_degrade(hr, 4, quantize=False)
    off = (hr + 0.2 * torch.sin(40 * x)).clamp(-1, 1)
    assert back_project(off, lr, 0) is off
    errors = [float((bicubic_degrade(back_project(off, lr, k), size=(16, 16), quantize=False) - lr).abs().mean())
              for k in (1, 5, 20)]  # fmt: skip
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


@pytest.mark.parametrize("bad", [-1, 101, 1.5, True])
def test_data_consistency_steps_out_of_range_is_refused(pipe, bad):
    with pytest.raises(ValueError, match=r"`data_consistency_steps` must be an int in \[0, 100\]"):
        pipe(_lr(), scale=2, num_inference_steps=2, data_consistency_steps=bad)
    with pytest.raises(ValueError, match="no larger"):
        back_project(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16))


# --------------------------------------------------------------------------------------------------------------------
# neurop-diff upscale --uncertainty N


@pytest.fixture
def small_png(tmp_path):
    from PIL import Image

    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)
    return path


def _upscale(*args):
    from neurop_diff_diffusers.cli import commands as cli

    return cli.main(["upscale", *(str(a) for a in args)])


def test_cli_uncertainty_writes_the_mean_and_a_float32_map(small_png, tmp_path):
    from PIL import Image

    out = tmp_path / "o" / "result.png"
    rc = _upscale(small_png, "-o", out, "--scale", "2", "--model", "preset:tiny", "--steps", "1", "--uncertainty", "3")
    assert rc == 0
    spread_path = tmp_path / "o" / "result.uncertainty.tif"
    with Image.open(spread_path) as spread:
        assert spread.mode == "F" and spread.size == (32, 24)
        values = np.asarray(spread)
    assert values.dtype == np.float32 and 0 <= values.min() and np.isfinite(values).all() and values.max() > 0
    # The map is the pipeline's, for the CLI's seed (0 by default): the same call through the API.
    pipe = build_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    array = np.asarray(Image.open(small_png).convert("RGB"))
    api = pipe(array, output_size=(24, 32), num_inference_steps=1, num_samples=3, output_type="np",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    np.testing.assert_allclose(values, api.uncertainty[0], atol=1e-5)
    with Image.open(out) as mean:
        np.testing.assert_allclose(np.asarray(mean), np.rint(api.images[0] * 255), atol=1)


@pytest.mark.parametrize(
    "extra, message", [(["--uncertainty", "1"], "in [2, 64]"), (["--uncertainty", "3", "--prior-only"], "prior-only")]
)
def test_cli_uncertainty_refusals_write_nothing(small_png, tmp_path, capsys, extra, message):
    out = tmp_path / "o" / "result.png"
    rc = _upscale(small_png, "-o", out, "--scale", "2", "--model", "preset:tiny", "--steps", "1", *extra)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_uncertainty_never_overwrites_an_existing_map(small_png, tmp_path, capsys):
    out = tmp_path / "result.png"
    (tmp_path / "result.uncertainty.tif").write_bytes(b"keep")
    rc = _upscale(small_png, "-o", out, "--scale", "2", "--model", "preset:tiny", "--steps", "1", "--uncertainty", "2")
    assert rc == 2
    assert "result.uncertainty.tif exists" in capsys.readouterr().err
    assert (tmp_path / "result.uncertainty.tif").read_bytes() == b"keep" and not out.exists()


def test_cli_two_inputs_sharing_one_map_the_second_is_refused(small_png, tmp_path, capsys):
    from PIL import Image

    Image.open(small_png).save(tmp_path / "in.tif")  # in_x2.png and in_x2.tif: one map in_x2.uncertainty.tif
    rc = _upscale(small_png, tmp_path / "in.tif", "--scale", "2", "--model", "preset:tiny", "--steps", "1",
                  "--uncertainty", "2")  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert f"in.tif: its output {tmp_path / 'in_x2.uncertainty.tif'} is also an output of {small_png}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "in.tif", "in_x2.png", "in_x2.uncertainty.tif"]


# neurop-diff upscale --data-consistency N


def test_cli_data_consistency_is_the_pipeline_option(small_png, tmp_path):
    from PIL import Image

    from neurop_diff_diffusers.data import pil_to_tensor

    def read(path):  # (1, 3, H, W) in [-1, 1]
        with Image.open(path) as image:
            return pil_to_tensor(image)[None]

    outs = {}
    for steps in ("0", "10"):
        out = tmp_path / f"dc{steps}.png"
        rc = _upscale(small_png, "-o", out, "--scale", "4", "--model", "preset:tiny", "--steps", "1",
                      "--data-consistency", steps)  # fmt: skip
        assert rc == 0
        outs[steps] = read(out)
    before, after = (lr_agreement(outs[k], read(small_png)) for k in ("0", "10"))
    assert before > 5.0 and after < before / 5  # the random tiny model disagrees with its LR; 10 iterations fix it


def test_cli_data_consistency_out_of_range_is_one_error_before_the_model(small_png, tmp_path, capsys, no_model):
    out = tmp_path / "o" / "result.png"
    assert _upscale(small_png, "-o", out, "--scale", "2", "--data-consistency", "101") == 2
    assert one_error_line(capsys) == "--data-consistency must be a number of iterations in [0, 100], got 101"
    assert not (tmp_path / "o").exists()
