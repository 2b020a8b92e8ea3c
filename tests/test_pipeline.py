"""NeurOpDiffPipeline on the tiny preset: sizes, inputs, seeds, schedulers, save/load, the prior once, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

from neurop_diff_diffusers import NeurOpDiffPipeline, build_pipeline, default_scheduler, noise_level
from neurop_diff_diffusers.runtime.presets import PRESETS


@pytest.fixture(scope="module")
def pipe() -> NeurOpDiffPipeline:
    p = build_pipeline("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _image(h=12, w=16, seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _run(pipe, image=None, steps=3, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    if "scale" not in kwargs and "output_size" not in kwargs:
        kwargs["scale"] = 2
    return pipe(image if image is not None else _image(), num_inference_steps=steps, generator=_gen(seed), **kwargs)


class CountingOperator(torch.nn.Module):
    """Wraps the neural operator's forward to count calls."""

    def __init__(self, pipe):
        super().__init__()
        self.calls = 0
        self.inner = pipe.neural_operator.forward
        self.pipe = pipe

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.inner(*args, **kwargs)

        self.pipe.neural_operator.forward = counted
        return self

    def __exit__(self, *exc):
        del self.pipe.neural_operator.forward


@pytest.mark.parametrize(
    "scale, expected",
    [(1, (12, 16)), (2, (24, 32)), (2.5, (30, 40)), (3.7, (44, 59)), (8, (96, 128)), (10, (120, 160))],
)
def test_output_size_for_scales(pipe, scale, expected):
    out = _run(pipe, scale=scale, steps=2).images
    assert out.shape == (1, *expected, 3)
    assert expected == (round(12 * scale), round(16 * scale))


@pytest.mark.parametrize("size", [(37, 53), (64, 20), (33, 33), (5, 90)])
def test_explicit_non_square_output_sizes(pipe, size):
    out = _run(pipe, output_size=size, steps=2).images
    assert out.shape == (1, *size, 3)
    assert out.min() >= 0 and out.max() <= 1


def test_output_types(pipe):
    pil = _run(pipe, output_type="pil").images
    assert isinstance(pil, list) and pil[0].size == (32, 24) and pil[0].mode == "RGB"
    np_out = _run(pipe, output_type="np").images
    pt = _run(pipe, output_type="pt").images
    assert pt.shape == (1, 3, 24, 32) and pt.dtype == torch.float32
    np.testing.assert_allclose(np_out, pt.permute(0, 2, 3, 1).numpy(), atol=0)
    np.testing.assert_array_equal(np.asarray(pil[0]), np.round(np_out[0] * 255).astype(np.uint8))
    (images,) = pipe(_image(), scale=2, num_inference_steps=2, return_dict=False, output_type="np")
    assert images.shape == (1, 24, 32, 3)


def test_input_kinds_agree(pipe):
    img = _image()
    arr = np.array(img)
    reference = _run(pipe, img).images
    for variant in (arr, arr.astype(np.float32) / 255, torch.from_numpy(arr).permute(2, 0, 1).float() / 255):
        np.testing.assert_allclose(_run(pipe, variant).images, reference, atol=1e-6)


def test_grayscale_and_rgba_pil_are_converted(pipe):
    gray = _image().convert("L")
    rgba = _image().convert("RGBA")
    assert _run(pipe, gray).images.shape == (1, 24, 32, 3)
    np.testing.assert_allclose(_run(pipe, rgba).images, _run(pipe, _image()).images, atol=1e-6)


def test_batches_of_lists(pipe):
    imgs = [_image(seed=1), _image(seed=2), _image(seed=3)]
    out = pipe(imgs, scale=1.5, num_inference_steps=2, generator=[_gen(i) for i in range(3)], output_type="np").images
    assert out.shape == (3, 18, 24, 3)
    single = _run(pipe, imgs[1], steps=2, seed=1, scale=1.5).images
    np.testing.assert_allclose(out[1:2], single, atol=1e-5)


def test_seed_determinism(pipe):
    a = _run(pipe, seed=7).images
    b = _run(pipe, seed=7).images
    c = _run(pipe, seed=8).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_prior_is_computed_once_per_call(pipe):
    with CountingOperator(pipe) as counter:
        once = _run(pipe, steps=5).images
    assert counter.calls == 1
    with CountingOperator(pipe) as counter:
        every = _run(pipe, steps=5, recompute_prior_every_step=True).images
    assert counter.calls == 5
    np.testing.assert_array_equal(once, every)


def test_unet_gets_continuous_noise_level(pipe):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape, args[1].clone())))
    try:
        _run(pipe, steps=4)
    finally:
        hook.remove()
    timesteps = pipe.scheduler.timesteps
    assert len(seen) == 4
    for (shape, level), t in zip(seen, timesteps):
        assert shape[1] == 6  # noisy image + prior
        assert level.dtype == torch.float32
        expected = math.sqrt(float(pipe.scheduler.alphas_cumprod[int(t)]))
        assert torch.allclose(level, torch.full_like(level, expected))
        assert 0 < level[0] <= 1


def test_pads_to_downsampling_factor(pipe):
    shapes = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        out = _run(pipe, output_size=(37, 53), steps=1).images
    finally:
        hook.remove()
    assert pipe.downsampling_factor == 4
    assert shapes == [(40, 56)] and out.shape == (1, 37, 53, 3)


@pytest.mark.parametrize(
    "scheduler_cls", [DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_schedulers(pipe, scheduler_cls):
    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler_cls.from_config(original.config)
        a = _run(pipe, steps=4).images
        b = _run(pipe, steps=4).images
    finally:
        pipe.scheduler = original
    assert a.shape == (1, 24, 32, 3) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_default_scheduler_is_the_authors():
    s = default_scheduler()
    assert isinstance(s, DDIMScheduler)
    c = s.config
    assert (c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule) == (2000, 1e-6, 1e-2, "linear")
    assert c.clip_sample is False and c.set_alpha_to_one is True and c.timestep_spacing == "leading"
    s.set_timesteps(50)
    assert s.timesteps[0] == 1960 and s.timesteps[-1] == 0
    assert noise_level(s.alphas_cumprod, 0).item() == pytest.approx(math.sqrt(1 - 1e-6))


def test_unet_embedding_matches_sr3():
    for preset in PRESETS.values():
        unet = preset["unet"]
        assert unet["flip_sin_to_cos"] is False and unet["freq_shift"] == 0 and unet["in_channels"] == 6


def test_paper_preset_matches_method():
    p = PRESETS["paper"]
    assert p["unet"]["block_out_channels"] == (64, 128, 128, 256, 256, 512)
    assert p["unet"]["layers_per_block"] == 1 and p["unet"]["norm_num_groups"] == 16 and p["unet"]["dropout"] == 0.2
    # attention on the level at 16x16 for a 256x256 input: level 4 (256 / 2**4)
    assert [i for i, b in enumerate(p["unet"]["down_block_types"]) if b.startswith("Attn")] == [4]
    assert p["neural_operator"]["width"] == 256 and p["neural_operator"]["num_heads"] == 16


def test_tiny_preset_is_tiny(pipe):
    n = pipe.unet.num_parameters() + pipe.neural_operator.num_parameters()
    assert 100_000 < n < 1_000_000


def test_callback_on_step_end(pipe):
    calls = []

    def callback(p, i, t, kwargs):
        calls.append((i, int(t), tuple(kwargs)))
        return {"latents": kwargs["latents"] * 0}

    out = _run(pipe, steps=3, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prior"])
    assert [c[0] for c in calls] == [0, 1, 2] and calls[0][2] == ("latents", "prior")
    np.testing.assert_allclose(out.images, 0.5, atol=1e-6)  # zeroed latents decode to mid-grey


def test_progress_bar_config_is_honoured(capsys):
    p = build_pipeline("tiny")
    p.set_progress_bar_config(disable=False, desc="denoising-test")
    _run(p, steps=2)
    assert "denoising-test" in capsys.readouterr().err
    p.set_progress_bar_config(disable=True)
    _run(p, steps=2)
    assert "denoising-test" not in capsys.readouterr().err


def test_save_load_round_trip_bit_identical(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "pipe")
    files = {p.relative_to(tmp_path / "pipe").as_posix() for p in (tmp_path / "pipe").rglob("*") if p.is_file()}
    assert "neural_operator/diffusion_pytorch_model.safetensors" in files
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not any(f.endswith(".bin") for f in files)
    reference = _run(pipe, seed=3).images
    for loader in (NeurOpDiffPipeline, DiffusionPipeline):
        loaded = loader.from_pretrained(tmp_path / "pipe")
        assert type(loaded) is NeurOpDiffPipeline
        loaded.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(_run(loaded, seed=3).images, reference)


def test_bicubic_prior_without_operator_round_trips(tmp_path, pipe):
    sr3 = NeurOpDiffPipeline(unet=pipe.unet, neural_operator=None, scheduler=pipe.scheduler)
    sr3.set_progress_bar_config(disable=True)
    out = _run(sr3).images
    sr3.save_pretrained(tmp_path / "sr3")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "sr3")
    assert loaded.neural_operator is None
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_run(loaded).images, out)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"scale": 2, "output_size": (10, 10)}, ValueError, "exactly one"),
        ({}, ValueError, "exactly one"),
        ({"scale": float("nan")}, ValueError, "scale"),
        ({"scale": float("inf")}, ValueError, "scale"),
        ({"scale": 0.5}, ValueError, "scale"),
        ({"scale": "2"}, TypeError, "scale"),
        ({"output_size": (10, 0)}, ValueError, "output_size"),
        ({"output_size": (10.0, 10)}, ValueError, "output_size"),
        ({"output_size": (10, 10, 3)}, ValueError, "output_size"),
        ({"output_size": "10x10"}, ValueError, "output_size"),
        ({"scale": 2, "num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"scale": 2, "num_inference_steps": 2001}, ValueError, "num_inference_steps"),
        ({"scale": 2, "output_type": "latent"}, ValueError, "output_type"),
        ({"scale": 2, "eta": 2.0}, ValueError, "eta"),
        ({"scale": 10, "max_output_pixels": 1000}, ValueError, "max_output_pixels"),
    ],
)
def test_argument_errors_before_any_work(pipe, kwargs, exc, match):
    kwargs.setdefault("num_inference_steps", 2)
    with CountingOperator(pipe) as counter, pytest.raises(exc, match=match):
        pipe(_image(), **kwargs)
    assert counter.calls == 0


@pytest.mark.parametrize(
    "image, exc, match",
    [
        (np.zeros((0, 5, 3), np.uint8), ValueError, "no pixels"),
        (PIL.Image.new("RGB", (0, 0)), ValueError, "no pixels"),
        (torch.zeros(1, 3, 0, 4), ValueError, "no pixels"),
        (torch.zeros(1, 4, 8, 8), ValueError, "3 channels"),
        (torch.zeros(1, 1, 8, 8), ValueError, "3 channels"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, "3 channels"),
        (np.zeros((8, 8, 3), np.uint16), TypeError, "uint8 or float"),
        (torch.full((3, 8, 8), 2.0), ValueError, r"\[0, 1\]"),
        (torch.full((3, 8, 8), float("nan")), ValueError, "NaN"),
        ([], ValueError, "empty"),
        ([_image(8, 8), _image(9, 8)], ValueError, "same size"),
        ("image.png", TypeError, "PIL image"),
    ],
)
def test_image_errors_before_any_work(pipe, image, exc, match):
    with CountingOperator(pipe) as counter, pytest.raises(exc, match=match):
        pipe(image, scale=2, num_inference_steps=2)
    assert counter.calls == 0


def test_pixel_budget_message_says_how_to_raise(pipe):
    with pytest.raises(ValueError) as info:
        pipe(_image(), scale=10, num_inference_steps=1, max_output_pixels=100)
    assert "pass a larger `max_output_pixels=`" in str(info.value)
    out = pipe(_image(), scale=10, num_inference_steps=1, max_output_pixels=120 * 160, output_type="np").images
    assert out.shape == (1, 120, 160, 3)


def test_prior_only_returns_the_operator_output(pipe):
    lr = _image()
    out = pipe(lr, output_size=(30, 41), prior_only=True, output_type="pt").images
    with torch.no_grad():
        x = torch.from_numpy(np.array(lr)).permute(2, 0, 1)[None].float() / 255 * 2 - 1
        prior = pipe.neural_operator(x, (30, 41)).sample
    torch.testing.assert_close(out, ((prior + 1) / 2).clamp(0, 1), rtol=0, atol=1e-6)


def test_strength_one_is_the_paper_sampler_and_lower_strength_starts_from_the_diffused_prior(pipe):
    torch.testing.assert_close(_run(pipe, steps=4), _run(pipe, steps=4, strength=1.0), rtol=0, atol=0)
    seen, first_input, priors = [], [], []

    def record(p, i, t, kwargs):
        seen.append(int(t))
        priors.append(kwargs["prior"])
        return {}

    def capture(module, args, kwargs):
        if not first_input:
            first_input.append(args[0][:, :3].clone())

    handle = pipe.unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        image = _image()
        out = pipe(
            image,
            scale=2,
            num_inference_steps=10,
            strength=0.3,
            generator=_gen(),
            output_type="pt",
            callback_on_step_end=record,
            callback_on_step_end_tensor_inputs=["prior"],
        ).images
    finally:
        handle.remove()
    assert out.shape == (1, 3, 24, 32)
    assert seen == [400, 200, 0]  # the last round(0.3 * 10) = 3 of 1800, 1600, ..., 0
    # the first UNet input is sqrt(gamma_400) * prior + sqrt(1 - gamma_400) * noise, with the generator's noise
    prior = priors[0]
    gamma = pipe.scheduler.alphas_cumprod[400]
    noise = torch.randn(prior.shape, generator=_gen())
    expected = gamma.sqrt() * prior + (1 - gamma).sqrt() * noise
    torch.testing.assert_close(first_input[0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strength", [0, -0.5, 1.5, float("nan"), "1", True])
def test_bad_strength_is_refused_before_any_work(pipe, strength):
    calls = []
    handle = pipe.neural_operator.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="`strength`"):
            pipe(_image(), scale=2, num_inference_steps=2, strength=strength)
    finally:
        handle.remove()
    assert calls == []


def test_default_strength_travels_with_the_saved_pipeline(pipe, tmp_path):
    custom = NeurOpDiffPipeline(**pipe.components, default_strength=0.3)
    custom.set_progress_bar_config(disable=True)
    custom.save_pretrained(tmp_path)
    loaded = NeurOpDiffPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_strength == 0.3
    torch.testing.assert_close(_run(loaded, steps=10), _run(pipe, steps=10, strength=0.3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="default_strength"):
        NeurOpDiffPipeline(**pipe.components, default_strength=0.0)


def _residual_pipeline(prediction_type: str, zero_output: bool, default_strength: float = 1.0) -> NeurOpDiffPipeline:
    base = build_pipeline("tiny", seed=3)
    if zero_output:
        torch.nn.init.zeros_(base.unet.conv_out.weight)
        torch.nn.init.zeros_(base.unet.conv_out.bias)
    return NeurOpDiffPipeline(
        unet=base.unet,
        neural_operator=base.neural_operator,
        scheduler=default_scheduler("ddim", prediction_type=prediction_type),
        default_strength=default_strength,
        residual=True,
    )


@pytest.mark.parametrize("strength", [1.0, 0.3])
def test_residual_pipeline_with_a_zero_x0_prediction_returns_the_prior(strength):
    pipe = _residual_pipeline("sample", zero_output=True)
    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    kwargs = {"scale": 2.0, "output_type": "pt", "num_inference_steps": 5}
    out = pipe(lr, strength=strength, generator=torch.Generator().manual_seed(1), **kwargs).images
    prior = pipe(lr, prior_only=True, **kwargs).images
    torch.testing.assert_close(out, prior, rtol=0, atol=1e-6)
    # The paper's (non-residual) pipeline with the same UNet returns no image at all: zeros, i.e. mid-grey.
    plain = NeurOpDiffPipeline(pipe.unet, pipe.neural_operator, pipe.scheduler)
    grey = plain(lr, generator=torch.Generator().manual_seed(1), **kwargs).images
    torch.testing.assert_close(grey, torch.full_like(grey, 0.5), rtol=0, atol=1e-6)


def test_residual_v_prediction_pipeline_saves_reloads_and_samples_the_same(tmp_path):
    pipe = _residual_pipeline("v_prediction", zero_output=False, default_strength=0.5)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["residual"] is True and index["default_strength"] == 0.5
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded, NeurOpDiffPipeline) and loaded.residual
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = [
        p(lr, scale=3.0, output_type="pt", num_inference_steps=4, generator=torch.Generator().manual_seed(5)).images
        for p in (pipe, loaded)
    ]
    assert outs[0].shape == (2, 3, 24, 24)
    # Loaded weights may take other CPU kernel paths (memory-mapped, unaligned): equal within float tolerance.
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    # Same seed, same output (the pipeline adds the prior back: not the prior itself, and not noise).
    again = loaded(lr, scale=3.0, output_type="pt", num_inference_steps=4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.images, outs[1])


def test_pipeline_residual_must_be_a_bool():
    base = build_pipeline("tiny")
    with pytest.raises(TypeError, match="`residual` must be a bool"):
        NeurOpDiffPipeline(base.unet, base.neural_operator, base.scheduler, residual="yes")


def test_loaded_weights_own_aligned_memory_so_round_trips_are_exact_on_any_cpu(tmp_path):
    """Memory-mapped safetensors weights sit at unaligned offsets (e.g. 40 or 52 mod 64), which some CPUs' kernels
    treat differently; the pipeline copies them into aligned memory, whatever the CPU."""
    from neurop_diff_diffusers.pipelines.pipeline_neurop_diff import own_aligned_weights

    layer = torch.nn.Conv2d(2, 2, 1)
    storage = torch.arange(30, dtype=torch.float32)
    layer.weight.data = storage[3:7].view(2, 2, 1, 1)  # 12 bytes past an aligned start
    layer.bias.data = storage[16:18]  # 64 bytes past it: aligned, kept
    assert layer.weight.data_ptr() % 64 and own_aligned_weights(layer) == 1
    assert layer.weight.data_ptr() % 64 == 0 and layer.weight.flatten().tolist() == [3.0, 4.0, 5.0, 6.0]
    assert layer.bias.data_ptr() == storage[16:].data_ptr()

    pipe = build_pipeline("tiny", seed=2)
    pipe.save_pretrained(tmp_path / "p")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    for module in (loaded.unet, loaded.neural_operator):
        assert all(t.data_ptr() % 64 == 0 for t in [*module.parameters(), *module.buffers()])
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = [
        p(lr, scale=2.0, output_type="pt", num_inference_steps=2, generator=torch.Generator().manual_seed(1)).images
        for p in (pipe, loaded)
    ]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    ("argument", "value", "paper_value", "bad", "message"),
    [
        ("eta", 1.0, 0.0, 2, r"`default_eta` must be a number in"),  # 0: deterministic DDIM
        ("data_consistency_steps", 7, 0, -1, r"`default_data_consistency_steps` must be an int in \[0, 100\]"),
    ],
)
def test_a_pipeline_default_is_saved_and_used_when_a_call_gives_none(tmp_path, argument, value, paper_value, bad,
                                                                     message):  # fmt: skip
    base = build_pipeline("tiny", seed=4)
    pipe = NeurOpDiffPipeline(base.unet, base.neural_operator, base.scheduler, **{f"default_{argument}": value})
    pipe.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())[f"default_{argument}"] == value
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(p, **kwargs):
        gen = torch.Generator().manual_seed(2)
        return p(lr, scale=2.0, output_type="pt", num_inference_steps=3, generator=gen, **kwargs).images

    assert torch.equal(run(loaded), run(loaded, **{argument: value}))
    assert not torch.equal(run(loaded), run(loaded, **{argument: paper_value}))
    assert torch.equal(run(loaded, **{argument: paper_value}), run(base))
    assert torch.equal(run(base), run(base, **{argument: paper_value}))  # saved without it: the paper's value
    with pytest.raises(ValueError, match=message):
        NeurOpDiffPipeline(base.unet, base.neural_operator, base.scheduler, **{f"default_{argument}": bad})


def test_a_thin_image_in_bfloat16_matches_float32():
    """An output two pixels wide reaches the UNet's deepest level one column wide, where oneDNN's bfloat16 strided
    convolution computes garbage on CPUs with bfloat16 units (all NaN here before the UNet's input was widened)."""
    lr = np.random.default_rng(0).integers(0, 255, (9, 1, 3), dtype=np.uint8)
    outputs = []
    for dtype in (torch.float32, torch.bfloat16):
        pipe = build_pipeline("tiny", seed=0)
        pipe.set_progress_bar_config(disable=True)
        pipe.unet.to(dtype)
        generator = torch.Generator().manual_seed(0)
        outputs.append(pipe(lr, scale=2, num_inference_steps=2, generator=generator, output_type="np").images)
    assert outputs[1].shape == (1, 18, 2, 3) and np.isfinite(outputs[1]).all()
    assert np.abs(outputs[1] - outputs[0]).max() < 0.05
