"""Speed options: reduced precision, channels-last, the samplers, eval-mode presets, and their flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from neurop_diff_diffusers import (
    DTYPES,
    SCHEDULERS,
    NeurOpDiffPipeline,
    build_neural_operator,
    build_pipeline,
    build_unet,
    default_scheduler,
    make_scheduler,
    optimize_pipeline,
    parse_dtype,
    parse_setting,
)
from neurop_diff_diffusers.cli import main as cli_main
from neurop_diff_diffusers.cli import upscale as cli_upscale
from neurop_diff_diffusers.defaults import DTYPE_CHOICES, SCHEDULER_CHOICES
from neurop_diff_diffusers.pipelines.scheduling import scheduler_name
from neurop_diff_diffusers.runtime import hardware
from neurop_diff_diffusers.runtime.hardware import DeviceProbe, SlowPrecisionWarning
from neurop_diff_diffusers.runtime.optimization import resolve_dtype

LR = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _call(pipe, steps=3, seed=0, **kwargs):
    return pipe(
        LR, output_size=(16, 16), num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kwargs
    )


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.float32, key
        assert torch.equal(a[key], b[key]), key


def test_presets_are_built_in_eval_mode():
    assert not build_unet("tiny").training and not build_neural_operator("tiny").training
    pipe = build_pipeline("tiny")
    modules = [pipe.unet, pipe.neural_operator]
    assert not any(m.training for module in modules for m in module.modules())


def test_built_pipeline_samples_like_a_loaded_one(tmp_path):
    pipe = build_pipeline("tiny")
    pipe.save_pretrained(tmp_path / "p")
    loaded = NeurOpDiffPipeline.from_pretrained(tmp_path / "p")
    a = _call(pipe, output_type="pt").images
    b = _call(loaded, output_type="pt").images
    assert torch.equal(a, b)


def test_bfloat16_runs_end_to_end_with_a_float32_operator():
    pipe = build_pipeline("tiny")
    operator_before = _state(pipe.neural_operator)
    reference = _call(pipe, output_type="pt").images
    assert pipe.to(dtype=torch.bfloat16) is pipe
    assert pipe.unet.dtype == torch.bfloat16
    _assert_same_state(operator_before, _state(pipe.neural_operator))  # bit for bit, still float32
    out = _call(pipe, output_type="pt").images
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 16)
    assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, reference)  # the UNet did run in bfloat16
    assert (out - reference).abs().mean() < 0.05
    # The prior alone does not depend on the UNet's precision.
    prior_bf16 = _call(pipe, output_type="pt", prior_only=True).images
    pipe.to(dtype=torch.float32)
    assert torch.equal(prior_bf16, _call(pipe, output_type="pt", prior_only=True).images)
    array = _call(pipe.to(dtype=torch.bfloat16), output_type="np").images
    assert array.dtype == np.float32 and array.shape == (2, 16, 16, 3)


def test_from_pretrained_in_bfloat16_keeps_the_operator_in_float32(tmp_path):
    pipe = build_pipeline("tiny")
    pipe.save_pretrained(tmp_path / "p")
    loaded = NeurOpDiffPipeline.from_pretrained(tmp_path / "p", dtype=torch.bfloat16)
    assert loaded.unet.dtype == torch.bfloat16
    _assert_same_state(_state(pipe.neural_operator), _state(loaded.neural_operator))
    assert torch.isfinite(_call(loaded, output_type="pt").images).all()


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_sampler_runs_seeded_with_the_models_schedule(name):
    pipe = build_pipeline("tiny")
    optimize_pipeline(pipe, scheduler=name)
    assert scheduler_name(pipe.scheduler) == name
    config = pipe.scheduler.config
    assert (config.num_train_timesteps, config.beta_start, config.beta_end) == (2000, 1e-6, 1e-2)
    a = _call(pipe, steps=4, eta=1.0, output_type="pt").images
    b = _call(pipe, steps=4, eta=1.0, output_type="pt").images
    assert torch.isfinite(a).all() and torch.equal(a, b)
    # From the diffused prior too (img2img-style strength), where the multistep samplers start mid-way.
    assert torch.isfinite(_call(pipe, steps=4, strength=0.5, output_type="pt").images).all()


def test_make_scheduler_keeps_prediction_type_and_leaves_its_argument():
    like = default_scheduler(prediction_type="v_prediction", beta_end=0.02)
    for name in SCHEDULERS:
        made = make_scheduler(name, like)
        assert made.config.prediction_type == "v_prediction" and made.config.beta_end == 0.02
        assert made is not like
    assert type(make_scheduler("ddim", like)).__name__ == "DDIMScheduler"
    assert make_scheduler("ddim", like).config.timestep_spacing == "leading"
    with pytest.raises(ValueError, match="`scheduler` must be one of"):
        make_scheduler("euler", like)


def test_ddim_through_make_scheduler_is_the_pipelines_own():
    pipe = build_pipeline("tiny")
    reference = _call(pipe, output_type="pt").images
    optimize_pipeline(pipe, scheduler="ddim")
    assert torch.equal(reference, _call(pipe, output_type="pt").images)


def test_channels_last_changes_only_the_last_bits():
    pipe = build_pipeline("tiny")
    reference = _call(pipe, output_type="pt").images
    optimize_pipeline(pipe, channels_last=True)
    weight = pipe.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_call(pipe, output_type="pt").images, reference, atol=1e-4, rtol=0)


def test_optimize_pipeline_checks_before_changing_anything():
    pipe = build_pipeline("tiny")
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        optimize_pipeline(pipe, dtype="int8")
    with pytest.raises(ValueError, match="`scheduler` must be one of"):
        optimize_pipeline(pipe, dtype="bfloat16", scheduler="euler")
    with pytest.raises(TypeError, match="`channels_last` must be a bool"):
        optimize_pipeline(pipe, dtype="bfloat16", channels_last="yes")
    assert pipe.unet.dtype == torch.float32 and scheduler_name(pipe.scheduler) == "ddim"
    assert parse_dtype("float16") is torch.float16 and parse_dtype(None) is None
    assert parse_dtype(torch.bfloat16) is torch.bfloat16


def test_parse_setting():
    assert parse_setting("ddim:50") == {
        "name": "ddim:50",
        "scheduler": "ddim",
        "steps": 50,
        "dtype": "float32",
        "channels_last": False,
        "compile": False,
    }
    assert parse_setting("unipc:20:bfloat16:cl")["channels_last"] is True
    assert parse_setting("unipc:20:bfloat16:compile:cl")["compile"] is True
    for bad, message in [
        ("ddim", "SAMPLER:STEPS"),
        ("euler:10", "sampler"),
        ("ddim:0", "steps"),
        ("ddim:x", "steps"),
        ("ddim:10:int8", "precision"),
        ("ddim:10:float32:nhwc", "can only be 'cl' and 'compile'"),
        ("ddim:10:float32:cl:cl", "once each"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_setting(bad)


def test_cli_choices_are_the_librarys():
    assert DTYPE_CHOICES == ("auto", *DTYPES)
    assert SCHEDULER_CHOICES == SCHEDULERS


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_upscale_with_the_speed_flags(image, tmp_path):
    common = ["upscale", str(image), "--scale", "2", "--model", "preset:tiny", "--steps", "3"]
    assert cli_main([*common, "-o", str(tmp_path / "ref.png")]) == 0
    fast = [*common, "--dtype", "bfloat16", "--channels-last", "--scheduler", "unipc"]
    assert cli_main([*fast, "-o", str(tmp_path / "fast.png")]) == 0
    ref = np.asarray(Image.open(tmp_path / "ref.png"))
    out = np.asarray(Image.open(tmp_path / "fast.png"))
    assert out.shape == ref.shape == (24, 32, 3) and not np.array_equal(out, ref)


def test_cli_refuses_float16_on_the_cpu(image, tmp_path, capsys):
    rc = cli_main(["upscale", str(image), "--scale", "2", "--dtype", "float16", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--dtype float16 needs a GPU" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_evaluation_records_the_sampler_and_precision(tmp_path):
    from neurop_diff_diffusers.cli.evaluate import main

    data = tmp_path / "data" / "class"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"class{i:02d}.png")
    args = ["--pipeline", "preset:tiny", "--data_dir", str(tmp_path / "data"), "--split", "all", "--resolution", "32"]
    args += ["--scales", "4", "--methods", "neurop_diff", "--num_inference_steps", "2", "--no_lpips", "--no_figures"]
    args += ["--no_progress", "--no_niqe", "--device", "cpu"]
    main([*args, "--scheduler", "dpm++2m", "--dtype", "bfloat16", "--output_dir", str(tmp_path / "e")])
    config = json.loads((tmp_path / "e" / "results.json").read_text())["config"]
    assert config["sampler"] == "dpm++2m" and config["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="contradict"):
        main([*args, "--fp16", "--dtype", "bfloat16", "--output_dir", str(tmp_path / "f")])
    assert not (tmp_path / "f").exists()


def test_serve_refuses_float16_on_the_cpu(capsys):
    pytest.importorskip("gradio")
    assert cli_main(["serve", "--dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "float16 needs a GPU" in err and len(err.splitlines()) == 1


def test_float16_keeps_the_operator_in_float32_too():
    # In float16 the paper operator's Galerkin sums over 65,536 output pixels overflow (NaN, measured on a CPU);
    # the pipeline therefore never casts it.
    pipe = build_pipeline("tiny")
    before = _state(pipe.neural_operator)
    pipe.to(dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    _assert_same_state(before, _state(pipe.neural_operator))


def test_the_fast_path_keeps_the_embedded_models_quality_on_a_real_image():
    # The README's fast path (DDIM, 20 steps, dtype auto + channels-last: bfloat16 on a CPU with bfloat16 units,
    # float32 elsewhere) against the float32 pipeline, same seed, on a UCMerced validation image at x4. The sweep over
    # 21 images measured -0.001 dB / -0.0008 SSIM against DDIM-50 (bfloat16).
    from pathlib import Path

    from neurop_diff_diffusers import has_default_model, load_default_pipeline
    from neurop_diff_diffusers.data.degradation import bicubic_degrade
    from neurop_diff_diffusers.metrics.quality import psnr

    if not has_default_model():
        pytest.skip("this installation ships no embedded model")
    path = Path(__file__).resolve().parents[1] / "assets" / "samples" / "harbor31.png"
    hr = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    lr = (bicubic_degrade(hr, 4.0) + 1) / 2
    target = (hr + 1) / 2

    def run(pipe):
        out = pipe(lr, scale=4, num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt")
        return psnr(out.images, target).item()

    reference = run(load_default_pipeline())
    fast = run(optimize_pipeline(load_default_pipeline(), dtype="auto", channels_last=True))
    assert reference > 20 and abs(fast - reference) < 0.05, (reference, fast)  # 0.001 dB on an AMX Xeon


# ---- dtype "auto" and the bfloat16 warning, the CPU detection mocked both ways ----

CPU_KINDS = {
    "native": DeviceProbe(frozenset({"avx2", "avx512f", "avx512_bf16"}), "AVX512", None, "a Zen 4 EPYC"),
    "emulated": DeviceProbe(frozenset({"avx2", "fma"}), "AVX2", None, "a Zen 3 EPYC"),
}


@pytest.fixture(params=sorted(CPU_KINDS))
def cpu_kind(request, monkeypatch):
    """This machine's CPU replaced by one with (``native``) or without (``emulated``) bfloat16 units."""
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hardware, "probe_device", lambda device="cpu": CPU_KINDS[request.param])
    return request.param


def test_resolve_dtype_auto(cpu_kind, monkeypatch):
    expected = torch.bfloat16 if cpu_kind == "native" else torch.float32
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype("float32", "cpu") is torch.float32 and resolve_dtype(None) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a user capping oneDNN's ISA: its bf16 units unused
    assert resolve_dtype("auto", "cpu") is torch.float32
    with pytest.raises(ValueError, match=r"`dtype` must be one of \['auto', 'float32'"):
        resolve_dtype("fastest", "cpu")


def test_optimize_pipeline_auto_and_the_bfloat16_warning(cpu_kind, recwarn):
    pipe = optimize_pipeline(build_pipeline("tiny"), dtype="auto", channels_last=True)
    assert pipe.unet.dtype == (torch.bfloat16 if cpu_kind == "native" else torch.float32)
    assert pipe.neural_operator.dtype == torch.float32
    assert not [w for w in recwarn if issubclass(w.category, SlowPrecisionWarning)]
    optimize_pipeline(pipe, dtype="bfloat16")
    slow = [str(w.message) for w in recwarn if issubclass(w.category, SlowPrecisionWarning)]
    if cpu_kind == "native":
        assert slow == []
    else:
        assert len(slow) == 1 and slow[0].startswith("bfloat16 is emulated here, 4.5x-72x slower than float32")
    assert pipe.unet.dtype == torch.bfloat16  # a warning, not a refusal


def test_cli_warns_once_before_any_work_for_emulated_bfloat16(cpu_kind, image, tmp_path, capsys, monkeypatch):
    loaded = []
    real = cli_upscale.load_job_pipeline  # the name the single-file command looks up
    monkeypatch.setattr(
        cli_upscale, "load_job_pipeline", lambda *a: loaded.append(capsys.readouterr().err) or real(*a)
    )
    common = ["upscale", str(image), "--scale", "2", "--model", "preset:tiny", "--steps", "2"]
    assert cli_main([*common, "--dtype", "bfloat16", "-o", str(tmp_path / "bf16.png")]) == 0
    before_model = loaded[0].splitlines()
    after = capsys.readouterr().err
    if cpu_kind == "native":
        assert before_model == []
    else:
        assert before_model == [
            "neurop-diff: warning: --dtype bfloat16 is emulated here, 4.5x-72x slower than float32 (measured): "
            "this CPU has no bfloat16 units (no avx512_bf16 / amx_bf16 flag); use --dtype auto (float32 here) or "
            "float32"
        ]
    assert "warning" not in after and "emulated" not in after  # once only
    assert (tmp_path / "bf16.png").is_file()
    assert cli_main([*common, "--dtype", "auto", "--channels-last", "-o", str(tmp_path / "auto.png")]) == 0
    assert "warning" not in capsys.readouterr().err and (tmp_path / "auto.png").is_file()


def test_cli_auto_writes_what_the_chosen_precision_writes(image, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "probe_device", lambda device="cpu": CPU_KINDS["emulated"])
    common = ["upscale", str(image), "--scale", "2", "--model", "preset:tiny", "--steps", "2"]
    assert cli_main([*common, "--dtype", "auto", "-o", str(tmp_path / "auto.png")]) == 0
    assert cli_main([*common, "--dtype", "float32", "-o", str(tmp_path / "f32.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "auto.png")), np.asarray(Image.open(tmp_path / "f32.png")))


def test_info_says_what_auto_picks_and_why(cpu_kind, capsys, monkeypatch):
    assert cli_main(["info"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--dtype auto")]
    if cpu_kind == "native":
        assert lines == [
            "--dtype auto on cpu: bfloat16; this CPU computes bfloat16 natively (avx512_bf16; torch capability AVX512)"
        ]
    else:
        assert lines == [
            "--dtype auto on cpu: float32; this CPU has no bfloat16 units (no avx512_bf16 / amx_bf16 flag)"
        ]
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(
        hardware, "probe_device", lambda device="cpu": DeviceProbe(CPU_KINDS["native"].cpu_flags, "AVX2")
    )
    assert cli_main(["info"]) == 0
    assert (
        "--dtype auto on cpu: float32; this CPU has avx512_bf16 but torch's CPU kernels run at AVX2, set by "
        "ATEN_CPU_CAPABILITY=avx2"
    ) in capsys.readouterr().out.splitlines()


def test_evaluation_dtype_auto_records_the_resolved_precision(tmp_path, monkeypatch):
    from neurop_diff_diffusers.cli.evaluate import main

    monkeypatch.setattr(hardware, "probe_device", lambda device="cpu": CPU_KINDS["emulated"])
    data = tmp_path / "data" / "class"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / "class00.png")
    args = ["--pipeline", "preset:tiny", "--data_dir", str(tmp_path / "data"), "--split", "all", "--resolution", "32"]
    args += ["--scales", "4", "--methods", "neurop_diff", "--num_inference_steps", "1", "--no_lpips", "--no_figures"]
    args += ["--no_progress", "--no_niqe", "--device", "cpu", "--dtype", "auto", "--output_dir", str(tmp_path / "e")]
    main(args)
    assert json.loads((tmp_path / "e" / "results.json").read_text())["config"]["dtype"] == "float32"
